"""Test-only backends that inject real faults into the real measurement path.

Registered for a run with `LLM_ENERGY_EXTRA_BACKENDS=transformers=fakes.faulty_backend:FaultyBackend`
and `tests/` on PYTHONPATH (see `fault_env`). Production code never reads the fault variables."""

import os
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent.parent


def fault_env(faults: dict[int, str], fault_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a pipeline run whose transformers cells get `faults`, keyed by the
    cell's batch size: {2: "raise@load", 3: "oom@generate", ...} (see faulty_backend)."""
    fault_dir.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")])),
        "LLM_ENERGY_EXTRA_BACKENDS": "transformers=fakes.faulty_backend:FaultyBackend",
        "LLM_ENERGY_TEST_FAULTS": ",".join(f"{k}={v}" for k, v in faults.items()),
        "LLM_ENERGY_TEST_FAULT_DIR": str(fault_dir),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }
