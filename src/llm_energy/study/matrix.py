"""Expand a study into cells: models × backends × each backend's axes × the workload's axes
(`WorkloadSweep.variants`: a backend is crossed only with the axes it uses), crossed.

A cell's id is a short hash of what it measures (`identity.cell_hash`), so the same
measured configuration always lands in the same place and a change makes a new cell.
"""

from __future__ import annotations

import csv
import io
import itertools
from dataclasses import dataclass, field
from typing import Any

from llm_energy.backends import registry
from llm_energy.study.config import GPU_AXES, StudyConfig
from llm_energy.study.identity import cell_hash
from llm_energy.study.workload_sweep import workload_columns


@dataclass(frozen=True)
class Cell:
    cell_id: str
    model: str
    backend: str
    settings: dict[str, Any]
    config: dict[str, Any] = field(repr=False)
    #: Values of the measurement axes (GPU power limit, clocks) this cell has; {} when unset.
    measurement_axes: dict[str, Any] = field(default_factory=dict)
    #: The swept workload keys' values and the arrival (`workload_axes`), for matrix.csv.
    workload_axes: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return f"cells/{self.model}/{self.backend}/{self.cell_id}"


@dataclass(frozen=True)
class PrunedCell:
    model: str
    backend: str
    settings: dict[str, Any]
    reason: str
    measurement_axes: dict[str, Any] = field(default_factory=dict)
    workload_axes: dict[str, Any] = field(default_factory=dict)


def prune_reason(backend: str, settings: dict[str, Any], study: StudyConfig) -> str | None:
    """Why a backend cannot run this combination on the configured device, or None (the
    backend's own rules: `BackendSpec.prune_reason`)."""
    spec = registry.get(backend)
    # Arrival settings never prune: an offline engine's cells get every request at once
    # (`WorkloadSweep.variants`) and say so (`workload_columns`, matrix.csv).
    return spec.prune_reason(settings, study.measurement.device)


def gpu_axis_values(study: StudyConfig) -> list[dict[str, Any]]:
    """One dict per combination of the GPU axes that are set ([{}] when none is): unset
    keys stay out of the cell's configuration, so studies without them keep their cell ids."""
    axes = study.measurement.gpu_axes()
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def gpu_prune_reason(study: StudyConfig, gpu_values: dict[str, Any]) -> str | None:
    if gpu_values and study.measurement.device != "cuda":
        return (f"GPU power limit and clocks ({', '.join(gpu_values)}) need an NVIDIA GPU "
                f"(measurement.device: cuda), not '{study.measurement.device}'")
    return None


def expand(study: StudyConfig) -> tuple[list[Cell], list[PrunedCell]]:
    cells: list[Cell] = []
    pruned: list[PrunedCell] = []
    shared = {"measurement": study.measurement.model_dump(mode="json", exclude=set(GPU_AXES))}
    variants = {server: study.workload.variants(server) for server in (False, True)}
    for model in study.models:
        model_config = model.model_dump(mode="json", exclude_none=True)
        for backend, backend_config in study.backends.enabled().items():
            axes = backend_config.axes()
            fixed = backend_config.fixed()
            names = list(axes)
            for values in itertools.product(*(axes[n] for n in names)):
                settings = {**dict(zip(names, values)), **fixed}
                server = registry.get(backend).is_server(settings)
                for workload, gpu_values in itertools.product(variants[server],
                                                              gpu_axis_values(study)):
                    swept = {k: workload[k] for k in study.workload.swept()}
                    reason = prune_reason(backend, settings, study) \
                        or gpu_prune_reason(study, gpu_values)
                    if reason:
                        pruned.append(PrunedCell(model.name, backend, settings, reason, gpu_values,
                                                 workload_axes(workload, swept, server)))
                        continue
                    config = {
                        "model": model_config,
                        "backend": backend,
                        "settings": settings,
                        "workload": workload,
                        "measurement": {**shared["measurement"], **gpu_values},
                    }
                    cells.append(Cell(cell_hash(config), model.name, backend, settings, config,
                                      gpu_values, workload_axes(workload, swept, server)))
    return cells, pruned


def workload_axes(workload: dict[str, Any], swept: dict[str, Any],
                  server: bool) -> dict[str, Any]:
    """What matrix.csv says of a cell's workload: the swept keys' values (a dataset by its
    path; empty where the backend does not cross the key) and how requests arrive."""
    columns = workload_columns(workload, server)
    return {**{k: columns[k] if k in columns else workload[k] for k in swept},
            "arrival": columns["arrival"]}


def matrix_csv(cells: list[Cell], pruned: list[PrunedCell]) -> str:
    """One row per cell, planned or pruned, for `results/<study>/matrix.csv`."""
    axis_names = sorted({k for c in [*cells, *pruned] for k in c.settings})
    gpu_names = [k for k in GPU_AXES if any(k in c.measurement_axes for c in [*cells, *pruned])]
    workload_names = list(dict.fromkeys(k for c in [*cells, *pruned] for k in c.workload_axes))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["cell_id", "model", "backend", *axis_names, *gpu_names, *workload_names,
                     "status", "reason", "path"])

    def values(c: Cell | PrunedCell) -> list[Any]:
        return [*(c.settings.get(a, "") for a in axis_names),
                *(_csv_value(c.measurement_axes.get(a, "")) for a in gpu_names),
                *(_csv_value(c.workload_axes.get(a)) for a in workload_names)]
    for cell in cells:
        writer.writerow([cell.cell_id, cell.model, cell.backend, *values(cell), "planned", "", cell.path])
    for p in pruned:
        writer.writerow(["", p.model, p.backend, *values(p), "pruned", p.reason, ""])
    return out.getvalue()


def _csv_value(value: Any) -> Any:
    """A clock range [min, max] as 'min-max' (one CSV field); None as an empty field."""
    if value is None:
        return ""
    return "-".join(str(v) for v in value) if isinstance(value, list) else value
