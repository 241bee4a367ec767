"""Shared by the scripts (thin adapters that unpack Snakemake's `snakemake` object): find the
package and send the script's output to the rule's log. To run a stage by hand use
`llm-energy aggregate|figures|report|export RESULTS_DIR` (llm_energy.execution.stages) or
`llm-energy measure CELL_JSON MODEL_PATH OUT_DIR`."""

import contextlib
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))


@contextlib.contextmanager
def logged(smk):
    """Redirect stdout/stderr to the rule's log file."""
    if not smk.log:
        yield sys.stdout
        return
    with (
        open(smk.log[0], "w") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        yield log
