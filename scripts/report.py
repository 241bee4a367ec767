"""Rule `report`: the self-contained HTML report."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import logged

from llm_energy.execution import stages

# Guarded: worker processes reading the cells' details (spawn) import this module again.
if __name__ == "__main__":
    with logged(snakemake):
        stages.report(snakemake.input.summary, snakemake.input.matrix,
                      list(snakemake.input.figures), list(snakemake.input.provenance),
                      sorted(p for d in snakemake.input.power for p in Path(d).glob("*.png")),
                      snakemake.output[0], snakemake.params.title,
                      list(snakemake.params.references), dict(snakemake.params.model_ids),
                      [Path(r).parent for r in snakemake.input.runs], snakemake.threads)
