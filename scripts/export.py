"""Rule `export_mlenergy`: the summary in the ML.ENERGY leaderboard's format."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_energy.execution import stages

from _common import logged

with logged(snakemake):
    stages.export(snakemake.input.summary, Path(snakemake.output.index).parent,
                  snakemake.params.task)
