

rule matrix:
    output:
        "results/matrix.csv",
    params:
        # The whole matrix as a param: the file is rewritten whenever the study changes.
        table=PLAN.matrix_csv(),
    log:
        "results/logs/matrix.log",
    script:
        "../../scripts/write_matrix.py"


rule aggregate:
    input:
        runs=PLAN.runs_files(),
    output:
        parquet="results/summary.parquet",
        csv="results/summary.csv",
    params:
        # A param, so changing the carbon/price factors re-runs only the aggregation.
        carbon=PLAN.study.carbon.model_dump(mode="json"),
        slo=PLAN.study.slo.model_dump(mode="json") if PLAN.study.slo else {},
    log:
        "results/logs/aggregate.log",
    script:
        "../../scripts/aggregate.py"
