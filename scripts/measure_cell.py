"""Rule `measure_<backend>`: measure one cell in its backend's environment
(llm_energy.execution.runner.run_cell; by hand: `llm-energy measure`)."""

import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import logged

from llm_energy.execution.runner import run_cell
from llm_energy.study.plan import cell_to_measure
from llm_energy.system.processes import set_parent_death_signal

PROJECT_DIR = Path(__file__).resolve().parent.parent

# Snakemake gone (killed) -> SIGTERM here -> the runner stops the measurement's tree.
set_parent_death_signal(signal.SIGTERM)
with logged(snakemake) as log:
    # The param is what the cell measures; the full configuration, operational settings
    # included, comes from the study as it is now.
    cell = cell_to_measure(snakemake.params.cell["cell_id"], snakemake.config, str(PROJECT_DIR))
    status = run_cell(cell, snakemake.params.model_path, Path(snakemake.output.runs).parent,
                      log=log, project_dir=PROJECT_DIR)
    print(f"cell {cell['cell_id']}: {status}", file=log)
