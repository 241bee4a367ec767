"""Run one cell in its backend's environment as a child process in its own process group,
with a wall-clock limit and retries. Whatever happens, the cell ends with outputs: measured
rows, or a `status = failed` row that names the error, so the rest of the study goes on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from llm_energy import provenance, results
from llm_energy.measure import ERROR_FILE

SRC_DIR = Path(__file__).resolve().parent.parent
_KILL_GRACE_S = 10.0


class EnvironmentMissing(RuntimeError):
    pass


def python_for_backend(backend: str, project_dir: str | os.PathLike = ".") -> str:
    """The interpreter of the backend's environment.

    Order: $LLM_ENERGY_PYTHON_<BACKEND>, then `.venvs/<backend>/bin/python` (built by
    `make venv-<backend>`), then this interpreter when it can import the backend's package
    (e.g. inside a `--sdm conda` environment)."""
    override = os.environ.get(f"LLM_ENERGY_PYTHON_{backend.upper().replace('-', '_')}")
    if override:
        return override
    local = Path(project_dir) / ".venvs" / backend / "bin" / "python"
    if local.exists():
        return str(local.absolute())
    module = {"transformers": "transformers", "vllm": "vllm", "tensorrt-llm": "tensorrt_llm"}.get(backend)
    import importlib.util

    if module and importlib.util.find_spec(module) is not None:
        return sys.executable
    raise EnvironmentMissing(
        f"no environment for backend '{backend}': run `make venv-{backend}` "
        f"(or set LLM_ENERGY_PYTHON_{backend.upper().replace('-', '_')} to its python)"
    )


def _kill_group(process: subprocess.Popen[Any]) -> None:
    for sig, wait_s in ((signal.SIGTERM, _KILL_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _attempt(python: str, cell_file: Path, model_path: str, out: Path, timeout_s: float,
             log: TextIO) -> str | None:
    """One try; returns None on success or the error line."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC_DIR),
                                                                      os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(
        [python, "-m", "llm_energy.measure", "--cell", str(cell_file), "--model-path", model_path,
         "--out", str(out)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
    )
    try:
        code = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        return f"timeout: the cell ran longer than measurement.timeout_s={timeout_s:g} s and was killed"
    except BaseException:
        _kill_group(process)
        raise
    finally:
        # Children the measurement left behind (engine workers, servers) go with it.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if code == 0 and (out / "runs.parquet").exists():
        return None
    error_file = out / ERROR_FILE
    if error_file.exists():
        error = json.loads(error_file.read_text())
        return f"{error['type']}: {error['message']}"
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return f"measurement process exited with status {code}"


def run_cell(cell_config: dict[str, Any], model_path: str, out_dir: str | os.PathLike,
             log: TextIO = sys.stdout, project_dir: str | os.PathLike = ".") -> str:
    """Measure a cell; returns its status ('ok' or 'failed'). Outputs exist either way."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cell_file = out / ".cell.json"
    cell_file.write_text(json.dumps(cell_config, indent=2))
    measurement = cell_config["measurement"]
    attempts = 1 + int(measurement.get("retries", 0))
    error: str | None
    try:
        python = python_for_backend(cell_config["backend"], project_dir)
    except EnvironmentMissing as exc:
        python, error, attempts = "", str(exc), 0
    for attempt in range(1, attempts + 1):
        started = time.time()
        print(f"[{cell_config['cell_id']}] attempt {attempt}/{attempts} with {python}",
              file=log, flush=True)
        error = _attempt(python, cell_file, model_path, out, measurement["timeout_s"], log)
        if error is None:
            (out / ERROR_FILE).unlink(missing_ok=True)
            return "ok"
        print(f"[{cell_config['cell_id']}] failed after {time.time() - started:.1f} s: {error}",
              file=log, flush=True)
    write_failed_cell(cell_config, out, error or "unknown error")
    return "failed"


def write_failed_cell(cell_config: dict[str, Any], out: Path, error: str) -> None:
    row = {"cell_id": cell_config["cell_id"], "cycle": None, "model": cell_config["model"]["name"],
           "backend": cell_config["backend"], **cell_config["settings"],
           "device": cell_config["measurement"]["device"], "status": "failed", "error": error,
           "warnings": []}
    results.write_cell(out, [row], [], [], {
        "cell_config": cell_config, "status": "failed", "error": error,
        "packages": provenance.package_versions(), "code_fingerprint": provenance.code_fingerprint(),
        "git": provenance.git_state(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    })
