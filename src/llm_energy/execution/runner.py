"""Run one cell in its backend's environment as a child process in its own process group,
with a wall-clock limit and retries. Whatever happens, the cell ends with outputs: measured
rows, or a `status = failed` row that names the error, so the rest of the study goes on.

Faults and what they become (docs/reliability.md):
- an exception in the measurement: its type and first line (`.error.json` from measure.py);
  out-of-memory errors are prefixed `out of memory:`;
- a hang: after `measurement.timeout_s` the whole process group is sent SIGTERM, then SIGKILL,
  and so is every descendant that left the group;
- death by a signal (SIGKILL from the kernel's OOM killer, a segfault): named, with a hint;
- this runner killed (kill -9): the measuring child is told by the kernel that its parent is
  gone and kills its whole tree (measure/child.py), so nothing keeps running or writes late;
- this runner terminated (SIGTERM from scancel, SIGINT, SIGHUP): the measurement's tree is
  killed before the runner exits, so that no process is re-parented out of the job's tree
  (under Slurm without cgroups, such a process would escape scancel's SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import psutil

from llm_energy.backends import SCHEDULER_THREAD_VARIABLES, registry
from llm_energy.measure import provenance
from llm_energy.measure.child import ERROR_FILE, PARENT_PID_FLAG
from llm_energy.results import io as results
from llm_energy.study.cellspec import CellSpec
from llm_energy.study.workload_sweep import workload_columns
from llm_energy.system.processes import (
    become_subreaper,
    kill_processes,
    on_termination,
    stop_process_group,
)
from llm_energy.telemetry import gpu_control

SRC_DIR = Path(__file__).resolve().parents[2]
_KILL_GRACE_S = 10.0
#: Grace for the measurement when the job itself is being ended (Slurm's KillWait can be 5 s).
_TERMINATED_GRACE_S = 2.0


class Terminated(BaseException):
    """This runner received a termination signal; raised so that cleanup runs on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by signal {signal.Signals(signum).name}")
        self.signum = signum


class EnvironmentMissing(RuntimeError):
    pass


def python_for_backend(backend: str, project_dir: str | os.PathLike = ".") -> str:
    """The interpreter of the backend's environment (`BackendSpec` of the registry).

    Order: $LLM_ENERGY_PYTHON_<BACKEND>, then its local venv's `bin/python` (built by its make
    target, e.g. `.venvs/vllm`; a backend that runs in the pipeline's own `.venv` skips this),
    then this interpreter when it can import the backend's package (e.g. inside a
    `--sdm conda` environment)."""
    spec = registry.get(backend)
    override = os.environ.get(spec.python_env_var)
    if override:
        return override
    if spec.venv != registry.PIPELINE_VENV:
        local = Path(project_dir) / spec.venv / "bin" / "python"
        if local.exists():
            return str(local.absolute())
    import importlib.util

    if importlib.util.find_spec(spec.import_name) is not None:
        return sys.executable
    raise EnvironmentMissing(
        f"no environment for backend '{backend}': {spec.install_hint} "
        f"(or set {spec.python_env_var} to its python)"
    )


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _kill_group(process: subprocess.Popen[Any]) -> None:
    """SIGTERM the child's process group, then SIGKILL what is left, including descendants
    that started their own session (found before the child dies and orphans them)."""
    stop_process_group(process, _KILL_GRACE_S)


def _kill_strays(strays: list[psutil.Process]) -> None:
    kill_processes(strays, timeout_s=5.0)


def _become_subreaper() -> None:
    """Linux: orphans of the measurement (a server started in its own session whose parent was
    killed) are re-parented to this process instead of init, so they can be found and killed."""
    become_subreaper()


def _signal_error(code: int) -> str:
    name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
    if -code == signal.SIGKILL:
        return ("killed by signal SIGKILL (from outside the measurement; when nobody killed "
                "it, most likely the kernel's out-of-memory killer: check `dmesg`)")
    return f"killed by signal {name}"


def clear_cell_outputs(out: Path) -> None:
    """Remove a previous attempt's results and temporary files, so that a failure can never
    leave an older result in place that looks like this attempt's."""
    for name in (*results.CELL_FILES, ERROR_FILE):
        (out / name).unlink(missing_ok=True)
    for tmp in out.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def measurement_environment(backend: str) -> dict[str, str]:
    """The measuring process's environment: ours, the package on its path, and no
    scheduler-imposed thread counts for backends that bind their own threads."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC_DIR),
                                                                      os.environ.get("PYTHONPATH")]))}
    if registry.get(backend).self_threaded:
        for name in SCHEDULER_THREAD_VARIABLES:
            env.pop(name, None)
    return env


def _attempt(python: str, cell_file: Path, model_path: str, out: Path, timeout_s: float,
             log: TextIO, backend: str = "", measurement: dict[str, Any] | None = None) -> str | None:
    """One try; returns None on success or the error line. GPU settings the child changed
    and could not restore itself (killed, timed out, crashed) are reset here."""
    env = measurement_environment(backend)
    _become_subreaper()
    children_before = {p.pid for p in psutil.Process().children()}
    # A termination signal while waiting stops the measurement at once; one that arrives
    # during the cleanup below is held until the cleanup is done, so that it is never cut
    # short (what it would leave behind would be re-parented out of the job's tree).
    pending: dict[str, Any] = {"signum": None, "waiting": False}

    def on_signal(signum: int) -> None:
        if pending["signum"] is None:
            pending["signum"] = signum
            if pending["waiting"]:
                raise Terminated(signum)

    with on_termination(on_signal):
        # An argument list, never a shell string: config values (model paths, hub ids) are
        # passed as single arguments, whatever characters they contain.
        process = subprocess.Popen(
            [python, "-m", "llm_energy.measure.child", "--cell", str(cell_file), "--model-path",
             model_path, "--out", str(out), PARENT_PID_FLAG, str(os.getpid())],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env, shell=False,
        )
        timed_out = False
        try:
            pending["waiting"] = True
            if pending["signum"] is not None:
                raise Terminated(pending["signum"])
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pending["waiting"] = False
            _kill_group(process)
            timed_out = True
        except Terminated:
            pending["waiting"] = False
            # The job is being ended: the measurement kills its tree on SIGTERM within
            # milliseconds; do not wait out the usual grace.
            stop_process_group(process, _TERMINATED_GRACE_S)
            raise
        except BaseException:
            pending["waiting"] = False
            _kill_group(process)
            raise
        finally:
            pending["waiting"] = False
            # Children the measurement left behind (engine workers, servers) go with it.
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            # ... and those that left its group and were orphaned, now adopted by this
            # process (direct children that were not there before), with their descendants.
            adopted = [p for p in psutil.Process().children() if p.pid not in children_before]
            _kill_strays([*adopted, *(d for p in adopted for d in _descendants(p.pid))])
            # The child is gone: reset the GPU power limit/clocks it left (its markers name
            # them).
            for line in gpu_control.restore_after_child(
                    measurement or {}, process.pid,
                    log=lambda m: print(m, file=log, flush=True)):
                print(f"WARNING: {line}", file=log, flush=True)
        if pending["signum"] is not None:
            raise Terminated(pending["signum"])
    if timed_out:
        return f"timeout: the cell ran longer than measurement.timeout_s={timeout_s:g} s and was killed"
    if code == 0 and (out / "runs.parquet").exists():
        return None
    error_file = out / ERROR_FILE
    try:
        error = json.loads(error_file.read_text())
        prefix = "out of memory: " if error.get("kind") == "out-of-memory" else ""
        return f"{prefix}{error['type']}: {error['message']}"
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent, or half-written when the child was killed: the exit status says more
    if code < 0:
        return _signal_error(code)
    if code == 0:
        return "measurement process exited without writing runs.parquet"
    return f"measurement process exited with status {code}"


def run_cell(cell_config: dict[str, Any], model_path: str, out_dir: str | os.PathLike,
             log: TextIO = sys.stdout, project_dir: str | os.PathLike = ".") -> str:
    """Measure a cell; returns its status ('ok' or 'failed'). Outputs exist either way."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clear_cell_outputs(out)
    # The typed cell spec crosses the process boundary: every default filled on this side,
    # validated again on the other (measure.child).
    cell_config = CellSpec.of(cell_config).as_dict()
    cell_file = out / ".cell.json"
    cell_file.write_text(json.dumps(cell_config, indent=2))
    measurement = cell_config["measurement"]
    attempts = 1 + int(measurement["retries"])
    error: str | None
    try:
        python = python_for_backend(cell_config["backend"], project_dir)
    except EnvironmentMissing as exc:
        python, error, attempts = "", str(exc), 0
    for attempt in range(1, attempts + 1):
        started = time.time()
        print(f"[{cell_config['cell_id']}] attempt {attempt}/{attempts} with {python}",
              file=log, flush=True)
        if attempt > 1:
            clear_cell_outputs(out)
        error = _attempt(python, cell_file, model_path, out, measurement["timeout_s"], log,
                         cell_config["backend"], measurement)
        if error is None:
            (out / ERROR_FILE).unlink(missing_ok=True)
            return "ok"
        print(f"[{cell_config['cell_id']}] failed after {time.time() - started:.1f} s: {error}",
              file=log, flush=True)
    write_failed_cell(cell_config, out, error or "unknown error")
    return "failed"


def _workload_columns(cell_config: dict[str, Any]) -> dict[str, Any]:
    """A failed cell's workload columns, as a measured one's (none without a workload)."""
    if not isinstance(cell_config.get("workload"), dict):
        return {}
    return workload_columns(cell_config["workload"], registry.get(cell_config["backend"])
                            .is_server(cell_config["settings"]))


def write_failed_cell(cell_config: dict[str, Any], out: Path, error: str) -> None:
    row = {"cell_id": cell_config["cell_id"], "cycle": None, "model": cell_config["model"]["name"],
           "backend": cell_config["backend"], **cell_config["settings"],
           **_workload_columns(cell_config),
           **gpu_control.GpuSettings.from_measurement(cell_config["measurement"]).columns(),
           "device": cell_config["measurement"]["device"], "status": "failed", "error": error,
           "warnings": []}
    results.write_cell(out, [row], [], [], {
        "cell_config": cell_config, "status": "failed", "error": error,
        "packages": provenance.package_versions(), "code_fingerprint": provenance.code_fingerprint(),
        "requirements_lock": provenance.requirements_lock(cell_config["backend"]),
        "git": provenance.git_state(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    })


def failed_cells(runs_files: list[str]) -> list[str]:
    """One line per planned cell whose result says it failed or cannot be read; cells not
    run yet (no runs.parquet) are not listed. For the workflow's exit status."""
    import pyarrow.parquet as pq

    lines = []
    for path in runs_files:
        if not Path(path).exists():
            continue
        try:
            runs = pq.read_table(path, columns=["status", "error"]).to_pylist()
        except Exception as exc:  # an unreadable result is a failure too
            lines.append(f"{path}: unreadable ({type(exc).__name__})")
            continue
        errors = sorted({str(r["error"]) for r in runs if r["status"] != "ok"})
        if errors or not runs:
            lines.append(f"{path}: {'; '.join(errors) or 'no rows'}")
    return lines


def failed_cells_from_summary(runs_files: list[str], summary_path: str | Path) -> list[str] | None:
    """`failed_cells` from the aggregated summary (statuses, plus the unreadable files it
    recorded) instead of reading every runs.parquet again: None, so the caller reads the
    files, when the summary is missing, older than a result, or does not cover every
    existing result (for example a runs.parquet without rows)."""
    import pyarrow.parquet as pq

    from llm_energy.analysis.summary import read_problems

    summary_path = Path(summary_path)
    try:
        existing = [p for p in runs_files if Path(p).exists()]
        summary_mtime = summary_path.stat().st_mtime
        if any(Path(p).stat().st_mtime > summary_mtime for p in existing):
            return None
        summary = pq.read_table(summary_path, columns=["cell_id", "status", "error"]).to_pylist()
        problems = read_problems(summary_path)
    except Exception:  # no usable summary: read the results themselves
        return None
    by_cell = {row["cell_id"]: row for row in summary}
    lines = []
    for path in existing:
        problem = next((p for p in problems if p.startswith(f"{path}: ")), None)
        row = by_cell.get(Path(path).parent.name)
        if problem is not None:
            lines.append(f"{path}: unreadable ({problem[len(path) + 2:].split(':', 1)[0]})")
        elif row is None:
            return None
        elif row["status"] != "ok":
            lines.append(f"{path}: {row['error'] or 'no rows'}")
    return lines


def failure_message(runs_files: list[str], summary_path: str | Path | None = None) -> str | None:
    """The text the workflow prints before exiting non-zero, or None when no cell failed.
    With `summary_path` (results/<study>/summary.parquet), the statuses come from it when it is
    up to date: reading 10,000 runs.parquet after every run took minutes."""
    failed = None
    if summary_path is not None:
        failed = failed_cells_from_summary(runs_files, summary_path)
    if failed is None:
        failed = failed_cells(runs_files)
    if not failed:
        return None
    listed = "\n".join(f"  {line}" for line in failed)
    return (f"llm-energy: {len(failed)} of {len(runs_files)} cell(s) failed; the rest of the study "
            f"ran and the summary and report list the failures:\n{listed}\n"
            "To measure them again after fixing the cause, add to your snakemake command: "
            "--forcerun " + " ".join(line.split(": ", 1)[0] for line in failed) + "\n")
