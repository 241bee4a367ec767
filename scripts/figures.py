"""Rule `figures`: the study figures."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import logged

from llm_energy.execution import stages

with logged(snakemake):
    stages.figures(snakemake.input.summary,
                   [Path(r).parent for r in snakemake.input.runs],
                   Path(snakemake.output[0]).parent,
                   list(snakemake.params.references), dict(snakemake.params.model_ids))
