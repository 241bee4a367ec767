# One job per cell. The cell's full resolved configuration is a param, so Snakemake reruns
# exactly the cells whose configuration changed (package code is tracked in provenance).


def _cell(wildcards):
    return PLAN.cell_params(wildcards.cell_id)


def _timeout_min(wildcards, attempt):
    return int(PLAN.study.measurement.timeout_s / 60 * (1 + PLAN.study.measurement.retries)) + 5


rule measure:
    input:
        model=lambda wc: PLAN.model_input(wc.model),
    output:
        requests="results/cells/{model}/{backend}/{cell_id}/requests.parquet",
        timeseries="results/cells/{model}/{backend}/{cell_id}/timeseries.parquet",
        provenance="results/cells/{model}/{backend}/{cell_id}/provenance.json",
        runs="results/cells/{model}/{backend}/{cell_id}/runs.parquet",
    params:
        cell=_cell,
        model_path=lambda wc: PLAN.model_path(wc.model),
    log:
        "results/logs/measure/{model}/{backend}/{cell_id}.log",
    resources:
        gpu=PLAN.study.measurement.gpus_per_cell if PLAN.study.measurement.device == "cuda" else 0,
        runtime=_timeout_min,
    threads: workflow.cores if PLAN.study.measurement.device == "cpu" else 1
    script:
        "../../scripts/measure_cell.py"
