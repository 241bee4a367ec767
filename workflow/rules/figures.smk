from llm_energy.figures import FIGURES, FORMATS

FIGURE_FILES = [f"results/figures/{name}.{fmt}" for name in FIGURES for fmt in FORMATS]


rule figures:
    input:
        summary="results/summary.parquet",
    output:
        [
            report(f"results/figures/{name}.png", category="Tradeoffs",
                   caption="../report/figures.rst")
            for name in FIGURES
        ],
        [f"results/figures/{name}.{fmt}" for name in FIGURES for fmt in FORMATS if fmt != "png"],
    log:
        "results/logs/figures.log",
    script:
        "../../scripts/figures.py"
