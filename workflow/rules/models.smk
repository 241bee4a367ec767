# Demo models are built locally (random weights, locally trained tokenizer): no download.


def demo_spec(wildcards):
    return PLAN.demo_spec(wildcards.model)


rule demo_model:
    output:
        "resources/models/{model}/config.json",
    params:
        spec=demo_spec,
    log:
        "results/logs/demo_model/{model}.log",
    script:
        "../../scripts/build_demo_model.py"
