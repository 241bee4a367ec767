from llm_energy.figures import FIGURES, FORMATS

# Study figures, then one power-over-time figure per cell; the PNGs go into
# `snakemake --report`, each with its caption (workflow/report/<figure>.rst).
STUDY_FIGURE_FILES = [f"results/figures/{name}.{fmt}" for name in FIGURES for fmt in FORMATS]
POWER_FIGURE_FILES = [f"results/figures/power/{cell_id}.{fmt}" for cell_id in CELLS for fmt in FORMATS]
FIGURE_FILES = STUDY_FIGURE_FILES + POWER_FIGURE_FILES


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
        [
            report(f"results/figures/power/{cell_id}.png", category="Power per cell",
                   subcategory=cell.model, labels={"cell": cell_id, "backend": cell.backend},
                   caption="../report/power.rst")
            for cell_id, cell in CELLS.items()
        ],
        [f for f in FIGURE_FILES if not f.endswith(".png")],
    params:
        out_dir="results/figures",
    log:
        "results/logs/figures.log",
    script:
        "../../scripts/figures.py"
