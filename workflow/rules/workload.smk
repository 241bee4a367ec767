# One workload file per distinct workload and model, built in the pipeline's environment
# (the `datasets` library and one transformers version), so every backend's measurement reads
# the same token ids. Editing the dataset or trace rebuilds the file and reruns its cells.
# Its checks also run before any job, at planning (llm_energy.execution.preflight), where
# the tokenizer can be had without a job; here they catch the rest (hub models).


rule workload:
    input:
        lambda wc: PLAN.workload_inputs(wc.key),
    output:
        "resources/workloads/{key}.parquet",
    log:
        f"{RESULTS}/logs/workload/{{key}}.log",
    conda:
        PIPELINE_ENV
    params:
        workload=lambda wc: PLAN.workload_params(wc.key),
    script:
        "../../scripts/build_workload.py"
