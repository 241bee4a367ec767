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


# GGUF models (`gguf:` in the study) are converted once into a save_pretrained directory
# (llm_energy.models.gguf): dequantized weights, config, generation config, tokenizer with its
# chat template. Its config.json is an input of the workload and measure rules.
rule gguf_model:
    input:
        gguf=lambda wc: PLAN.gguf_file(wc.model),
    output:
        f"{GGUF_MODELS_DIR}/{{model}}/config.json",
    log:
        f"{RESULTS}/logs/gguf_model/{{model}}.log",
    conda:
        PIPELINE_ENV
    params:
        spec=lambda wc: PLAN.gguf_spec(wc.model),
    script:
        "../../scripts/convert_gguf.py"
