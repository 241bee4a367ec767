# llm-energy: energy, latency and throughput of LLM inference across a study matrix.
# The study is config/config.yaml unless you pass --configfile; see config/README.md.
# Outputs: results/<study name>/ (one folder per study) and results/index.json.


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/workload.smk"
include: "workflow/rules/measure.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/export.smk"


# Front page of `snakemake --report results/<study>/report.zip`.
report: "workflow/report/workflow.rst"


# Run in the Snakemake process, not as cluster jobs: each takes seconds, and on Slurm a job
# costs more than that in queueing and start-up. Demo models are tiny and built in < 1 s.
# GGUF conversions (`gguf_model`) are jobs: a large model's takes minutes and memory.
# Only `measure` goes to the cluster (see profiles/slurm/config.yaml).
localrules:
    all,
    study_record,
    matrix,
    demo_model,
    workload,
    aggregate,
    figures,
    power_figures,
    report,
    export_mlenergy,


# Every output of the study lives in results/<study name>/ (RESULTS, workflow/rules/common.smk).
rule all:
    default_target: True
    input:
        f"{RESULTS}/study.json",
        f"{RESULTS}/matrix.csv",
        f"{RESULTS}/summary.parquet",
        f"{RESULTS}/summary.csv",
        FIGURE_FILES,
        f"{RESULTS}/report.html",
        MLENERGY_FILES,
