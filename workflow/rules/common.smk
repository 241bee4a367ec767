# Everything the rules share: the validated study (PLAN), its folder, output lists and
# the helper functions the rules call. Rules live in the other rule files, never here.
import atexit
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from llm_energy.analysis.export import task_file
from llm_energy.analysis.figures import FORMATS, figure_names
from llm_energy.backends.registry import PIPELINE_ENVIRONMENT
from llm_energy.execution.runner import failure_message
from llm_energy.study.plan import GGUF_MODELS_DIR, plan_or_exit
from llm_energy.execution.preflight import preflight_or_exit

# No `configfile:` directive: Snakemake would merge a user's --configfile into the default
# study key by key. Validation happens here, before any job exists; it also refuses a study
# name whose folder belongs to another config file (llm_energy.study.layout).
# The project directory holds the backend environments (.venvs/<backend>).
PLAN = plan_or_exit(config, workflow.basedir, [str(f) for f in workflow.configfiles])
# Dataset workloads built in memory with their model's tokenizer where it can be had without
# a job (the workload rule's own checks; cached per workload in .snakemake/llm-energy/):
# a missing field, no usable record, nothing left after the length filters, a prompt over a
# cell's context is one line here, not a failed first job. Not again in each job's process.
if workflow.is_main_process:
    preflight_or_exit(PLAN)
CELLS = PLAN.cells
# Every output of this study lives under results/<study name>/.
RESULTS = PLAN.results_dir
# The pipeline environment of all rules but `measure` (registry: PIPELINE_ENVIRONMENT's
# conda env file, generated from its requirements by `llm-energy envs`).
PIPELINE_ENV = str(Path(workflow.basedir) / PIPELINE_ENVIRONMENT["conda_env"])

# Published measurements drawn beside the cells (`references:`, analysis-only): their files
# are inputs and their entries params of the figures and report rules only.
REFERENCES = [
    {**r.model_dump(mode="json"), "path": str(Path(r.path).expanduser())}
    for r in PLAN.study.references
]
REFERENCE_FILES = [r["path"] for r in REFERENCES]
MODEL_IDS = PLAN.study.reference_model_ids() if REFERENCES else {}

# Study figures, then (opt-in) one power-over-time figure per cell; the PNGs go into
# `snakemake --report`, each with its caption (workflow/report/<figure>.rst).
STUDY_FIGURES = figure_names(bool(REFERENCES))
STUDY_FIGURE_FILES = [
    f"{RESULTS}/figures/{name}.{fmt}" for name in STUDY_FIGURES for fmt in FORMATS
]
# Per-cell power figures go into one directory output: listing 3 files per cell as separate
# outputs makes Snakemake's DAG work grow with the square of the cell count. Drawn only with
# `figures: {power_per_cell: true}` (~0.7 s per cell): the report draws power in the page.
POWER_FIGURES = PLAN.study.figures.power_per_cell
POWER_FIGURE_DIR = f"{RESULTS}/figures/power"
POWER_FIGURE_FILES = [POWER_FIGURE_DIR] if POWER_FIGURES else []
FIGURE_FILES = STUDY_FIGURE_FILES + POWER_FIGURE_FILES

# The summary in the ML.ENERGY leaderboard's format: index.json + one task file (the study).
MLENERGY_FILES = [
    f"{RESULTS}/mlenergy/index.json",
    f"{RESULTS}/mlenergy/{task_file(PLAN.study.name)}",
]

RUNS_FILES = PLAN.runs_files()


def cell_files(name):
    """One file of every planned cell (requests.parquet, provenance.json, ...)."""
    return [r.replace("runs.parquet", name) for r in RUNS_FILES]


def demo_spec(wildcards):
    return PLAN.demo_spec(wildcards.model)


def cell_identity(wildcards):
    """What the cell measures (the measure rule's `cell` param)."""
    return PLAN.cell_identity(wildcards.cell_id)


def backend_conda_env(spec):
    """A backend's conda environment (registry: `BackendSpec.conda_env`), used only with
    `--sdm conda` (the local default runs in .venvs/<backend>, README): its `-cuda` variant on
    CUDA studies where one exists (envs/vllm-cuda.yaml), else its own file, else the
    pipeline's."""
    path = Path(workflow.basedir) / spec.conda_env if spec.conda_env else None
    if path is not None and PLAN.study.measurement.device == "cuda":
        cuda = path.with_name(f"{path.stem}-cuda.yaml")
        if cuda.is_file():
            return str(cuda)
    return str(path) if path is not None and path.is_file() else PIPELINE_ENV


def project_file(relative):
    """A file of the project (a container image) by absolute path, or None."""
    return str(Path(workflow.basedir) / relative) if relative else None


wildcard_constraints:
    cell_id="[0-9a-f]{12}",
    model="[A-Za-z0-9][A-Za-z0-9._-]*",
    backend="[a-z][a-z0-9-]*",


# Failed cells do not stop the study (the runner writes a `status = failed` row and the job
# succeeds), so the exit status is set here: non-zero, with the list, when any planned cell
# failed or its result is unreadable. Not called on dry runs or when nothing had to be done.
# Its last line says where the report is.
onsuccess:
    _failures = failure_message(RUNS_FILES, f"{RESULTS}/summary.parquet")
    if _failures:
        sys.stderr.write(_failures)
    if Path(f"{RESULTS}/report.html").is_file():
        # At exit: after Snakemake's own closing lines ("Complete log: ...").
        atexit.register(sys.stderr.write, f"report: {RESULTS}/report.html\n")
    if _failures:
        raise SystemExit(1)


# A job failed (Snakemake exits non-zero itself): still say which cells failed.
onerror:
    sys.stderr.write(failure_message(RUNS_FILES, f"{RESULTS}/summary.parquet") or "")
