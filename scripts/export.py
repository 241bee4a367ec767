"""Rule `export_mlenergy`: the summary in the ML.ENERGY leaderboard app's layout."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import logged

from llm_energy.execution import stages

with logged(snakemake):
    stages.export(snakemake.input.summary, Path(snakemake.output.index).parent,
                  snakemake.params.task, checkpoints=dict(snakemake.params.checkpoints))
