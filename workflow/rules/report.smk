rule report:
    input:
        summary=f"{RESULTS}/summary.parquet",
        matrix=f"{RESULTS}/matrix.csv",
        figures=[f"{RESULTS}/figures/{name}.png" for name in FIGURES],
        power=POWER_FIGURE_DIR,
        provenance=cell_files("provenance.json"),
    output:
        report(
            f"{RESULTS}/report.html",
            category="Report",
            caption="../report/report.rst",
        ),
    log:
        f"{RESULTS}/logs/report.log",
    conda:
        PIPELINE_ENV
    params:
        title=f"llm-energy study: {PLAN.study.name}",
    script:
        "../../scripts/report.py"
