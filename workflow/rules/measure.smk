# One job per cell. What the cell measures (`llm_energy.study.identity`) is a param, and so
# are the package versions of its backend's environment: Snakemake reruns exactly the cells
# whose measured configuration or backend software changed. Operational settings (timeout,
# retries, idle cache) are no param: the script reads them from the study when it runs, so
# changing them reruns nothing. The code of src/llm_energy is not tracked by Snakemake; its
# fingerprint is recorded per cell in provenance.json (`llm-energy stale` lists the cells
# measured with other code; README "Reruns").


rule measure:
    input:
        model=lambda wc: PLAN.model_input(wc.model),
    output:
        requests=f"{RESULTS}/cells/{{model}}/{{backend}}/{{cell_id}}/requests.parquet",
        timeseries=f"{RESULTS}/cells/{{model}}/{{backend}}/{{cell_id}}/timeseries.parquet",
        provenance=f"{RESULTS}/cells/{{model}}/{{backend}}/{{cell_id}}/provenance.json",
        runs=f"{RESULTS}/cells/{{model}}/{{backend}}/{{cell_id}}/runs.parquet",
    log:
        f"{RESULTS}/logs/measure/{{model}}/{{backend}}/{{cell_id}}.log",
    conda:
        measure_env
    threads: PLAN.threads(lambda: workflow.cores)
    # On Slurm: gpu -> --gpus, runtime -> -t (minutes), mem_mb -> --mem, cpus_per_task ->
    # --cpus-per-task. cpus_per_task is set from threads explicitly because a profile's
    # default-resources cpus_per_task would otherwise win over threads.
    resources:
        gpu=PLAN.gpus(),
        # 1 for cells that change GPU power limit/clocks: `--resources gpu_control=N` caps them.
        gpu_control=lambda wc: PLAN.gpu_control(wc.cell_id),
        runtime=PLAN.runtime_min(),
        mem_mb=lambda wc: PLAN.mem_mb(wc.model, wc.backend),
        cpus_per_task=lambda wc, threads: threads,
    params:
        cell=cell_identity,
        model_path=lambda wc: PLAN.model_path(wc.model),
        # Not used by the script: here so that a new package version reruns the cells.
        software=lambda wc: PLAN.software(wc.backend),
    script:
        "../../scripts/measure_cell.py"
