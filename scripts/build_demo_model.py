"""Rule `demo_model`: build a demo model (llm_energy.models.demo)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import logged

from llm_energy.models.demo import build_demo_model
from llm_energy.study.config import DemoModelSpec

with logged(snakemake):
    path = build_demo_model(DemoModelSpec(**snakemake.params.spec),
                            Path(snakemake.output[0]).parent)
    print(f"demo model written to {path}")
