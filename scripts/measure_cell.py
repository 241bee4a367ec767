"""Measure one cell in its backend's environment.

CLI: python scripts/measure_cell.py CELL_JSON MODEL_PATH OUT_DIR"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import logged  # noqa: E402

from llm_energy.execution.runner import run_cell  # noqa: E402


def main(smk=None):
    if smk is not None:
        cell, model_path, out = dict(smk.params.cell), smk.params.model_path, Path(smk.output.runs).parent
    else:
        parser = argparse.ArgumentParser(description=__doc__)
        parser.add_argument("cell_json")
        parser.add_argument("model_path")
        parser.add_argument("out_dir")
        args = parser.parse_args()
        cell, model_path, out = json.loads(Path(args.cell_json).read_text()), args.model_path, Path(args.out_dir)
    with logged(smk) as log:
        status = run_cell(cell, model_path, out, log=log, project_dir=Path(__file__).resolve().parent.parent)
        print(f"cell {cell['cell_id']}: {status}", file=log)


main(globals().get("snakemake"))
