"""Rule `aggregate`: the cells into the study summary (llm_energy.execution.stages)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import logged

from llm_energy.execution import stages

with logged(snakemake):
    stages.aggregate(list(snakemake.input.runs), snakemake.output.parquet,
                     snakemake.output.csv, carbon=dict(snakemake.params.carbon),
                     slo=dict(snakemake.params.slo) or None, study=snakemake.params.study)
