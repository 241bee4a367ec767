

rule report:
    input:
        summary="results/summary.parquet",
        matrix="results/matrix.csv",
        figures=[f"results/figures/{name}.png" for name in FIGURES],
        provenance=[r.replace("runs.parquet", "provenance.json") for r in PLAN.runs_files()],
    output:
        "results/report.html",
    params:
        title=f"llm-energy study: {PLAN.study.name}",
    log:
        "results/logs/report.log",
    script:
        "../../scripts/report.py"
