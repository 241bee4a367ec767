"""Shared by the scripts: find the package, send output to the rule's log."""

import contextlib
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))


@contextlib.contextmanager
def logged(smk):
    """Redirect stdout/stderr to the rule's log file when run by Snakemake."""
    if smk is None or not smk.log:
        yield sys.stdout
        return
    with open(smk.log[0], "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        yield log
