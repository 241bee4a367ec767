# The summary in the ML.ENERGY leaderboard's format: index.json + one task file (the study).
from llm_energy.analysis.export import task_file

MLENERGY_FILES = ["results/mlenergy/index.json", f"results/mlenergy/{task_file(PLAN.study.name)}"]


rule export_mlenergy:
    input:
        summary="results/summary.parquet",
    output:
        index=MLENERGY_FILES[0],
        task=MLENERGY_FILES[1],
    params:
        task=PLAN.study.name,
    log:
        "results/logs/export_mlenergy.log",
    script:
        "../../scripts/export.py"
