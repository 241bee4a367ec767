"""Rule `power_figures` (opt-in): one power-over-time figure per cell."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import logged

from llm_energy.execution import stages

# Guarded: figure worker processes (spawn) import this module again as __mp_main__.
if __name__ == "__main__":
    with logged(snakemake):
        stages.power_figures([Path(r).parent for r in snakemake.input.runs],
                             Path(snakemake.output.power).parent,
                             snakemake.params.cache_dir, snakemake.threads)
