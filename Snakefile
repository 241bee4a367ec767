# llm-energy: energy, latency and throughput of LLM inference across a study matrix.
# The study is config/config.yaml unless you pass --configfile; see config/README.md.

include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/measure.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        "results/matrix.csv",
        "results/summary.parquet",
        "results/summary.csv",
        FIGURE_FILES,
        "results/report.html",
    default_target: True
