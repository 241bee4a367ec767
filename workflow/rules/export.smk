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
        # Checkpoint directories: parameter counts and architecture for the app's fields.
        checkpoints={m: PLAN.model_path(m) for m in PLAN.models},
    script:
        "../../scripts/export.py"
