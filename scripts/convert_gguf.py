"""Rule `gguf_model`: convert a GGUF file into a save_pretrained directory
(llm_energy.models.gguf)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import logged

from llm_energy.models.gguf import convert_gguf

with logged(snakemake):
    spec = snakemake.params.spec
    path = convert_gguf(snakemake.input.gguf, Path(snakemake.output[0]).parent,
                        dtype=spec["dtype"], spec=spec)
    print(f"{snakemake.input.gguf} converted to {path}")
