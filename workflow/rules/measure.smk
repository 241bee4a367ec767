# One job per cell, one measure rule per backend, generated from the backend registry
# (llm_energy.backends.registry): `measure_<backend>`, each with its backend's conda env file
# (`--sdm conda`) and container image (`--sdm apptainer`); without either, the local
# environments are used (.venv, .venvs/<backend>; `make run`). What the cell measures
# (`llm_energy.study.identity`) is a param, and so are the package versions of its backend's
# environment: Snakemake reruns exactly the cells whose measured configuration or backend
# software changed. Operational settings (timeout, retries, idle cache) are no param: the
# script reads them from the study when it runs, so changing them reruns nothing. The code
# of src/llm_energy is not tracked by Snakemake; its fingerprint is recorded per cell in
# provenance.json (`llm-energy stale` lists the cells measured with other code; README
# "Reruns").
from llm_energy.backends import registry as _registry

for _spec in _registry.specs().values():

    rule:
        name:
            _spec.rule_name
        input:
            unpack(lambda wc: PLAN.measure_inputs(wc.cell_id, wc.model)),
        output:
            requests=f"{RESULTS}/cells/{{model}}/{_spec.name}/{{cell_id}}/requests.parquet",
            timeseries=f"{RESULTS}/cells/{{model}}/{_spec.name}/{{cell_id}}/timeseries.parquet",
            provenance=f"{RESULTS}/cells/{{model}}/{_spec.name}/{{cell_id}}/provenance.json",
            runs=f"{RESULTS}/cells/{{model}}/{_spec.name}/{{cell_id}}/runs.parquet",
        log:
            f"{RESULTS}/logs/measure/{{model}}/{_spec.name}/{{cell_id}}.log",
        conda:
            backend_conda_env(_spec)
        container:
            project_file(_spec.container_image)
        threads: PLAN.threads(lambda: workflow.cores)
        # On Slurm: gpu -> --gpus, runtime -> -t (minutes), mem_mb -> --mem, cpus_per_task ->
        # --cpus-per-task. cpus_per_task is set from threads explicitly because a profile's
        # default-resources cpus_per_task would otherwise win over threads.
        resources:
            gpu=PLAN.gpus(),
            # 1 for cells that change GPU power limit/clocks: `--resources gpu_control=N` caps them.
            gpu_control=PLAN.gpu_control_resource(),
            runtime=PLAN.runtime_min(),
            mem_mb=lambda wc, backend=_spec.name: PLAN.mem_mb(wc.model, backend),
            cpus_per_task=lambda wc, threads: threads,
        params:
            cell=cell_identity,
            model_path=lambda wc: PLAN.model_path(wc.model),
            # Not used by the script: here so that a new package version reruns the cells.
            software=lambda wc, backend=_spec.name: PLAN.software(backend),
        script:
            "../../scripts/measure_cell.py"
