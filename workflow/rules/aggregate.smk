rule study_record:
    output:
        f"{RESULTS}/study.json",
    log:
        f"{RESULTS}/logs/study_record.log",
    conda:
        PIPELINE_ENV
    params:
        # Name, config hash and config file: rewritten when the study changes, and
        # results/index.json (all studies present) rebuilt with it.
        record=PLAN.record(),
    script:
        "../../scripts/study_record.py"


rule matrix:
    output:
        f"{RESULTS}/matrix.csv",
    log:
        f"{RESULTS}/logs/matrix.log",
    conda:
        PIPELINE_ENV
    params:
        # The whole matrix as a param: the file is rewritten whenever the study changes.
        table=PLAN.matrix_csv(),
    script:
        "../../scripts/write_matrix.py"


rule aggregate:
    input:
        runs=RUNS_FILES,
    output:
        parquet=f"{RESULTS}/summary.parquet",
        csv=f"{RESULTS}/summary.csv",
    log:
        f"{RESULTS}/logs/aggregate.log",
    conda:
        PIPELINE_ENV
    params:
        # A param, so changing the carbon/price factors re-runs only the aggregation.
        carbon=PLAN.study.carbon.model_dump(mode="json"),
        slo=PLAN.study.slo.model_dump(mode="json") if PLAN.study.slo else {},
        # The `study` column (cells of several studies can be compared side by side).
        study=PLAN.study.name,
    script:
        "../../scripts/aggregate.py"
