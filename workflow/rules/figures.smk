rule figures:
    input:
        summary=f"{RESULTS}/summary.parquet",
        requests=cell_files("requests.parquet"),
        runs=RUNS_FILES,
        references=REFERENCE_FILES,
    output:
        [
            report(
                f"{RESULTS}/figures/{name}.png",
                category="Figures",
                caption=f"../report/{name}.rst",
            )
            for name in STUDY_FIGURES
        ],
        [f for f in STUDY_FIGURE_FILES if not f.endswith(".png")],
    log:
        f"{RESULTS}/logs/figures.log",
    conda:
        PIPELINE_ENV
    params:
        references=REFERENCES,
        model_ids=MODEL_IDS,
    script:
        "../../scripts/figures.py"


# Opt-in (`figures: {power_per_cell: true}`): one power-over-time figure per cell.
if POWER_FIGURES:

    rule power_figures:
        input:
            timeseries=cell_files("timeseries.parquet"),
            runs=RUNS_FILES,
        output:
            power=report(
                directory(POWER_FIGURE_DIR),
                patterns=["{cell}.png"],
                category="Power per cell",
                caption="../report/power.rst",
            ),
        log:
            f"{RESULTS}/logs/power_figures.log",
        conda:
            PIPELINE_ENV
        # Processes drawing per-cell figures (capped by --cores / --local-cores).
        threads: 4
        params:
            # Unchanged cells' power figures are reused from here (Snakemake empties the
            # output directory before each run of this rule).
            cache_dir=f"{RESULTS}/.figure-cache/power",
        script:
            "../../scripts/power_figures.py"
