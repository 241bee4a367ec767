"""Where a number came from: software, code, hardware and the job that produced it.

Only a fixed list of environment variables is recorded, so tokens and secrets in the
environment never reach provenance files or logs."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from llm_energy.analysis.stale import all_measured_packages
from llm_energy.backends import registry
from llm_energy.measure.fingerprint import code_fingerprint

__all__ = ["code_fingerprint", "collect", "git_state", "gpu_info", "package_versions",
           "requirements_lock"]

DATA_STACK = ("pydantic", "pandas", "pyarrow", "numpy", "psutil")


def recorded_packages() -> tuple[str, ...]:
    """Every package whose version `llm-energy stale` compares (stale.py), and the data
    stack. Asked when recording (not at import: the registry is read then)."""
    return tuple(dict.fromkeys([*all_measured_packages(), *DATA_STACK]))

RECORDED_ENV = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_JOB_PARTITION",
                "SLURM_CLUSTER_NAME", "SLURM_CPUS_PER_TASK", "SLURM_MEM_PER_NODE",
                "SLURM_JOB_GPUS", "OMP_NUM_THREADS", "VLLM_CPU_KVCACHE_SPACE",
                "VLLM_CPU_OMP_THREADS_BIND")

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent
#: The checkout the package runs from (src/llm_energy/../..): where requirements/ lives.
PROJECT_DIR = _PACKAGE_ROOT.parent.parent


def package_versions() -> dict[str, str]:
    versions = {}
    for name in recorded_packages():
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def requirements_lock(backend: str, project_dir: str | os.PathLike[str] = PROJECT_DIR
                      ) -> dict[str, Any]:
    """The backend's pip lock file (`BackendSpec.requirements`, the pins its local venv and
    its conda env file are made from) and its sha256, so cells built by conda, a container
    or the venvs are known to run the same software. `sha256` is None where the file is not
    there (an installed package without its checkout, or a backend without a lock file)."""
    spec = registry.find(backend)
    path = spec.requirements_path(project_dir) if spec is not None else None
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path is not None else None
    except OSError:
        digest = None
    return {"file": spec.requirements if spec is not None else None, "sha256": digest}


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=_PACKAGE_ROOT, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> dict[str, Any]:
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _query(call: Any, *args: Any) -> Any:
    """One GPU query; None where the device does not support it (a provenance record must
    never fail a measurement). Older bindings return bytes."""
    try:
        value = call(*args)
    except Exception:  # NotSupported and friends
        return None
    return value.decode() if isinstance(value, bytes) else value


def gpu_info() -> dict[str, Any]:
    """Every GPU NVML sees (on Slurm with device cgroups: the job's GPUs), the driver and
    the CUDA version the driver supports. `environment.CUDA_VISIBLE_DEVICES` (indices or
    UUIDs) says which of them the measurement used. Name and power limit through Zeus's
    device layer (`telemetry/nvidia.py`); count, UUID, memory and versions, which Zeus has no
    getter for, through `telemetry/nvml_getters.py`."""
    from llm_energy.telemetry import nvidia
    from llm_energy.telemetry import nvml_getters as ng

    try:
        nvml = ng.load_nvml()
        count = ng.device_count(nvml)
    except Exception:  # NoGpus: no library, no driver, no GPU
        return {"gpus": [], "driver_version": None, "cuda_driver_version": None}
    try:
        zeus = nvidia.open_zeus(range(count)) if count else None
    except Exception:  # zeusd unreachable: the names and limits are unknown, not the rest
        zeus = None
    gpus = []
    for i in range(count):
        h = zeus.gpus[i].handle if zeus is not None else _query(ng.handle_by_index, nvml, i)
        memory_mb = _query(ng.memory_total_mb, nvml, h)
        limit_mw = _query(zeus.get_power_management_limit, i) if zeus is not None else None
        gpus.append({"index": i,
                     "name": _query(zeus.get_name, i) if zeus is not None else None,
                     "uuid": _query(ng.uuid, nvml, h),
                     "memory_mb": memory_mb,
                     "power_limit_w": limit_mw / 1000 if limit_mw is not None else None})
    driver, cuda = ng.driver_versions(nvml)
    return {"gpus": gpus, "driver_version": driver, "cuda_driver_version": cuda}


def _cpus_allowed() -> int | None:
    """CPUs this process may run on (a Slurm job's --cpus-per-task with task affinity),
    as opposed to `cpu_count`, the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def collect(cell_config: dict[str, Any], energy_sources: dict[str, str]) -> dict[str, Any]:
    torch_cuda = None
    if "torch" in sys.modules:
        torch_cuda = getattr(sys.modules["torch"].version, "cuda", None)
    return {
        "cell_config": cell_config,
        "packages": package_versions(),
        "code_fingerprint": code_fingerprint(),
        "requirements_lock": requirements_lock(cell_config["backend"]),
        "git": git_state(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_allowed": _cpus_allowed(),
        **gpu_info(),
        "torch_cuda_version": torch_cuda,
        "energy_sources": energy_sources,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "environment": {k: os.environ[k] for k in RECORDED_ENV if k in os.environ},
    }
