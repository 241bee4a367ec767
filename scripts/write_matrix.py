"""Rule `matrix`: the study's cells, planned and pruned (`llm-energy matrix CONFIG` by hand)."""

from pathlib import Path

Path(snakemake.output[0]).write_text(snakemake.params.table)
