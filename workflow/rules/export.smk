# The summary in the ML.ENERGY leaderboard's format: index.json + one task file (the study).


rule export_mlenergy:
    input:
        summary=f"{RESULTS}/summary.parquet",
    output:
        index=MLENERGY_FILES[0],
        task=MLENERGY_FILES[1],
    log:
        f"{RESULTS}/logs/export_mlenergy.log",
    conda:
        PIPELINE_ENV
    params:
        task=PLAN.study.name,
    script:
        "../../scripts/export.py"
