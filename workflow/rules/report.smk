rule report:
    input:
        summary=f"{RESULTS}/summary.parquet",
        matrix=f"{RESULTS}/matrix.csv",
        figures=[f"{RESULTS}/figures/{name}.png" for name in STUDY_FIGURES],
        # The opt-in per-cell power figures' directory (none by default).
        power=POWER_FIGURE_FILES,
        provenance=cell_files("provenance.json"),
        references=REFERENCE_FILES,
        # The detail view: output lengths and power over time of each cell.
        requests=cell_files("requests.parquet"),
        timeseries=cell_files("timeseries.parquet"),
        runs=RUNS_FILES,
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
    # Processes reading the cells' details (capped by --cores / --local-cores).
    threads: 4
    params:
        title=f"llm-energy study: {PLAN.study.name}",
        references=REFERENCES,
        model_ids=MODEL_IDS,
    script:
        "../../scripts/report.py"
