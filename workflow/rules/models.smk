# Demo models are built locally (random weights, locally trained tokenizer): no download.


def demo_spec(wildcards):
    model = next(m for m in PLAN.study.models if m.name == wildcards.model)
    return model.demo.model_dump(mode="json")


rule demo_model:
    output:
        "resources/models/{model}/config.json",
    params:
        spec=demo_spec,
    log:
        "results/logs/demo_model/{model}.log",
    script:
        "../../scripts/build_demo_model.py"
