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


def _cell(wildcards):
    return PLAN.cell_identity(wildcards.cell_id)


def _project_file(relative):
    """A file of the project (container image) by absolute path, or None."""
    return str(Path(workflow.basedir) / relative) if relative else None


def _conda_env(relative):
    """The backend's conda env file, or None where it has none (yet): Snakemake reads the
    file even without --sdm conda (job metadata), so a missing one must not be named."""
    path = _project_file(relative)
    return path if path and Path(path).is_file() else None


for _spec in _registry.specs().values():

    rule:
        name:
            _spec.rule_name
        input:
            model=lambda wc: PLAN.model_input(wc.model),
            workload=lambda wc: PLAN.workload_file(wc.cell_id),
        output:
            requests=f"results/cells/{{model}}/{_spec.name}/{{cell_id}}/requests.parquet",
            timeseries=f"results/cells/{{model}}/{_spec.name}/{{cell_id}}/timeseries.parquet",
            provenance=f"results/cells/{{model}}/{_spec.name}/{{cell_id}}/provenance.json",
            runs=f"results/cells/{{model}}/{_spec.name}/{{cell_id}}/runs.parquet",
        params:
            cell=_cell,
            model_path=lambda wc: PLAN.model_path(wc.model),
            # Not used by the script: here so that a new package version reruns the cells.
            software=lambda wc, backend=_spec.name: PLAN.software(backend),
        log:
            f"results/logs/measure/{{model}}/{_spec.name}/{{cell_id}}.log",
        conda:
            _conda_env(_spec.conda_env)
        container:
            _project_file(_spec.container_image)
        # On Slurm: gpu -> --gpus, runtime -> -t (minutes), mem_mb -> --mem, cpus_per_task ->
        # --cpus-per-task. cpus_per_task is set from threads explicitly because a profile's
        # default-resources cpus_per_task would otherwise win over threads.
        resources:
            gpu=PLAN.gpus(),
            # 1 for cells that change GPU power limit/clocks: `--resources gpu_control=N` caps them.
            gpu_control=lambda wc: PLAN.gpu_control(wc.cell_id),
            runtime=PLAN.runtime_min(),
            mem_mb=lambda wc, backend=_spec.name: PLAN.mem_mb(wc.model, backend),
            cpus_per_task=lambda wc, threads: threads,
        threads: PLAN.threads(lambda: workflow.cores)
        script:
            "../../scripts/measure_cell.py"
