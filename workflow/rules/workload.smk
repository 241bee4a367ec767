# One workload file per distinct workload and model, built in the pipeline's environment
# (the `datasets` library and one transformers version), so every backend's measurement reads
# the same token ids. Editing the dataset or trace rebuilds the file and reruns its cells.


rule workload:
    input:
        lambda wc: PLAN.workload_inputs(wc.key),
    output:
        "resources/workloads/{key}.parquet",
    params:
        workload=lambda wc: PLAN.workload_params(wc.key),
    log:
        "results/logs/workload/{key}.log",
    script:
        "../../scripts/build_workload.py"
