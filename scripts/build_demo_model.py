"""Build a demo model. CLI: python scripts/build_demo_model.py OUT_DIR [--spec JSON]"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import logged  # noqa: E402

from llm_energy.models.demo import build_demo_model  # noqa: E402
from llm_energy.study.config import DemoModelSpec  # noqa: E402


def main(smk=None):
    if smk is not None:
        out, spec = Path(smk.output[0]).parent, DemoModelSpec(**smk.params.spec)
    else:
        parser = argparse.ArgumentParser(description=__doc__)
        parser.add_argument("out")
        parser.add_argument("--spec", default="{}", help="DemoModelSpec fields as JSON")
        args = parser.parse_args()
        out, spec = Path(args.out), DemoModelSpec(**json.loads(args.spec))
    with logged(smk):
        path = build_demo_model(spec, out)
        print(f"demo model written to {path}")


main(globals().get("snakemake"))
