from llm_energy.analysis.figures import FIGURES, FORMATS

# Study figures, then one power-over-time figure per cell; the PNGs go into
# `snakemake --report`, each with its caption (workflow/report/<figure>.rst).
STUDY_FIGURE_FILES = [f"results/figures/{name}.{fmt}" for name in FIGURES for fmt in FORMATS]
# Per-cell power figures go into one directory output: listing 3 files per cell as separate
# outputs makes Snakemake's DAG work grow with the square of the cell count.
POWER_FIGURE_DIR = "results/figures/power"
FIGURE_FILES = STUDY_FIGURE_FILES + [POWER_FIGURE_DIR]


rule figures:
    input:
        summary="results/summary.parquet",
        requests=[r.replace("runs.parquet", "requests.parquet") for r in PLAN.runs_files()],
        timeseries=[r.replace("runs.parquet", "timeseries.parquet") for r in PLAN.runs_files()],
        runs=PLAN.runs_files(),
    output:
        [
            report(f"results/figures/{name}.png", category="Figures",
                   caption=f"../report/{name}.rst")
            for name in FIGURES
        ],
        [f for f in STUDY_FIGURE_FILES if not f.endswith(".png")],
        power=report(directory(POWER_FIGURE_DIR), patterns=["{cell}.png"],
                     category="Power per cell", caption="../report/power.rst"),
    params:
        out_dir="results/figures",
        # Unchanged cells' power figures are reused from here (Snakemake empties the
        # output directory before each run of this rule).
        cache_dir="results/.figure-cache/power",
    # Processes drawing per-cell figures (capped by --cores / --local-cores).
    threads: 4
    log:
        "results/logs/figures.log",
    script:
        "../../scripts/figures.py"
