# Demo models are built locally (random weights, locally trained tokenizer): no download.
# Shared by the studies of this working directory (resources/models/<model>).


rule demo_model:
    output:
        "resources/models/{model}/config.json",
    log:
        f"{RESULTS}/logs/demo_model/{{model}}.log",
    conda:
        PIPELINE_ENV
    params:
        spec=demo_spec,
    script:
        "../../scripts/build_demo_model.py"
