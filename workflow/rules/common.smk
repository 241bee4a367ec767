import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from llm_energy.workflow import plan_or_exit  # noqa: E402

# No `configfile:` directive: Snakemake would merge a user's --configfile into the default
# study key by key. Validation happens here, before any job exists.
PLAN = plan_or_exit(config)
CELLS = PLAN.cells
SCRIPTS = Path(workflow.basedir) / "scripts"


wildcard_constraints:
    cell_id="[0-9a-f]{12}",
    model="[A-Za-z0-9][A-Za-z0-9._-]*",
    backend="[a-z][a-z0-9-]*",
