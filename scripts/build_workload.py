"""Rule `workload`: build one workload file (llm_energy.workload.build)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import logged

from llm_energy.workload.build import build_for_model

with logged(snakemake):
    params = dict(snakemake.params.workload)
    out = Path(snakemake.output[0])
    built = build_for_model(params["spec"], params["model_path"], out,
                            trust_remote_code=params.get("trust_remote_code", False))
    print(f"workload {out}: {len(built.prompts)} requests, token ids sha256 "
          f"{built.token_ids_sha256}")
