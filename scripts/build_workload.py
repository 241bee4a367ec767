"""Build a workload file. CLI: python scripts/build_workload.py OUT.parquet MODEL_PATH SPEC_JSON"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import logged  # noqa: E402

from llm_energy.workload.build import build_for_model  # noqa: E402


def main(smk=None):
    if smk is not None:
        out, params = Path(smk.output[0]), dict(smk.params.workload)
    else:
        parser = argparse.ArgumentParser(description=__doc__)
        parser.add_argument("out")
        parser.add_argument("model_path")
        parser.add_argument("spec", help="WorkloadSpec fields as JSON")
        args = parser.parse_args()
        out, params = Path(args.out), {"model_path": args.model_path,
                                       "spec": json.loads(args.spec)}
    with logged(smk):
        built = build_for_model(params["spec"], params["model_path"], out,
                                trust_remote_code=params.get("trust_remote_code", False))
        print(f"workload {out}: {len(built.prompts)} requests, token ids sha256 "
              f"{built.token_ids_sha256}")


main(globals().get("snakemake"))
