import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from llm_energy.study.plan import plan_or_exit  # noqa: E402

# No `configfile:` directive: Snakemake would merge a user's --configfile into the default
# study key by key. Validation happens here, before any job exists.
# The project directory holds the backend environments (.venvs/<backend>).
PLAN = plan_or_exit(config, workflow.basedir)
CELLS = PLAN.cells
SCRIPTS = Path(workflow.basedir) / "scripts"


wildcard_constraints:
    cell_id="[0-9a-f]{12}",
    model="[A-Za-z0-9][A-Za-z0-9._-]*",
    backend="[a-z][a-z0-9-]*",


# Failed cells do not stop the study (the runner writes a `status = failed` row and the job
# succeeds), so the exit status is set here: non-zero, with the list, when any planned cell
# failed or its result is unreadable. Not called on dry runs or when nothing had to be done.
onsuccess:
    from llm_energy.execution.runner import failure_message

    _failures = failure_message(PLAN.runs_files(), "results/summary.parquet")
    if _failures:
        sys.stderr.write(_failures)
        raise SystemExit(1)


# A job failed (Snakemake exits non-zero itself): still say which cells failed.
onerror:
    from llm_energy.execution.runner import failure_message

    sys.stderr.write(failure_message(PLAN.runs_files(), "results/summary.parquet") or "")
