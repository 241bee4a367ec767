"""Rule `aggregate`: the cells into the study summary (llm_energy.execution.stages)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_energy.execution import stages

from _common import logged

with logged(snakemake):
    stages.aggregate(list(snakemake.input.runs), snakemake.output.parquet,
                     snakemake.output.csv, carbon=dict(snakemake.params.carbon))
