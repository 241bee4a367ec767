rule report:
    input:
        summary="results/summary.parquet",
        matrix="results/matrix.csv",
        figures=[f"results/figures/{name}.png" for name in FIGURES],
        power=POWER_FIGURE_DIR,
        provenance=[r.replace("runs.parquet", "provenance.json") for r in PLAN.runs_files()],
    output:
        report("results/report.html", category="Report", caption="../report/report.rst"),
    params:
        title=f"llm-energy study: {PLAN.study.name}",
    log:
        "results/logs/report.log",
    script:
        "../../scripts/report.py"
