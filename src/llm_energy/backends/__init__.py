"""Backends by name, from the registry (`registry.py`, one `BackendSpec` per backend).
Implementations are imported lazily: each backend's packages live in its own environment and
need not be importable elsewhere."""

from __future__ import annotations

from typing import Any

from llm_energy.backends import registry
from llm_energy.backends.base import (
    Backend,
    BackendUnavailable,
    LoadInfo,
    RequestRecord,
)
from llm_energy.backends.registry import EXTRA_BACKENDS_ENV, BackendSpec

# The BLAS thread counts a scheduler exports for a job (Snakemake sets
# OPENBLAS/MKL/..._NUM_THREADS to the job's threads) fight the thread binding of backends that
# pin their own compute threads (`BackendSpec.self_threaded`; vLLM's CPU build binds OpenMP
# to the cores it picks): a vLLM-CPU cell ran 25x slower with them. Their measuring processes
# start without these variables.
SCHEDULER_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                              "GOTO_NUM_THREADS", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def is_server(name: str, settings: dict[str, Any] | None = None) -> bool:
    """Whether the cell's requests go through the HTTP load generator."""
    return registry.get(name).is_server(settings)


def backend_class(name: str, settings: dict[str, Any] | None = None) -> type[Backend]:
    """The class for backend `name`; `settings` (the cell's) select a mode where the backend
    has several (`BackendSpec.modes`)."""
    return registry.get(name).backend_class(settings)


__all__ = ["Backend", "BackendSpec", "BackendUnavailable", "LoadInfo", "RequestRecord",
           "EXTRA_BACKENDS_ENV", "SCHEDULER_THREAD_VARIABLES", "backend_class", "is_server",
           "registry"]
