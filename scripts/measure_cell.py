"""Measure one cell in its backend's environment.

CLI: python scripts/measure_cell.py CELL_JSON MODEL_PATH OUT_DIR"""

import argparse
import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import logged  # noqa: E402

from llm_energy.execution.processes import set_parent_death_signal  # noqa: E402
from llm_energy.execution.runner import run_cell  # noqa: E402
from llm_energy.study.plan import cell_to_measure  # noqa: E402

PROJECT_DIR = Path(__file__).resolve().parent.parent


def main(smk=None):
    # Snakemake gone (killed) -> SIGTERM here -> the runner stops the measurement's tree.
    set_parent_death_signal(signal.SIGTERM)
    if smk is None:
        parser = argparse.ArgumentParser(description=__doc__)
        parser.add_argument("cell_json")
        parser.add_argument("model_path")
        parser.add_argument("out_dir")
        args = parser.parse_args()
        cell, model_path, out = json.loads(Path(args.cell_json).read_text()), args.model_path, Path(args.out_dir)
    else:
        model_path, out = smk.params.model_path, Path(smk.output.runs).parent
    with logged(smk) as log:
        if smk is not None:
            # The param is what the cell measures; the full configuration, operational
            # settings included, comes from the study as it is now.
            cell = cell_to_measure(smk.params.cell["cell_id"], smk.config, str(PROJECT_DIR))
        status = run_cell(cell, model_path, out, log=log, project_dir=PROJECT_DIR)
        print(f"cell {cell['cell_id']}: {status}", file=log)


main(globals().get("snakemake"))
