"""The cell spec: what one measurement job is told, typed, crossing the parent/child process
boundary (`execution.runner` writes it as `.cell.json`, `measure.child` reads it back).

Both sides validate the same pydantic model, so every default has one source: the study
config's (`WorkloadConfig`, `MeasurementConfig`) and the backend's settings class (registry).
The measuring code reads every key directly, never with a fallback of its own.

Which of these fields enter the cell's id is the hash policy, one function:
`study.identity.cell_hash` (re-exported here as `cell_id_of`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llm_energy.backends import registry
from llm_energy.study.config import ClockSetting, MeasurementConfig, WorkloadConfig
from llm_energy.study.identity import CELL_ID_LENGTH, cell_hash

#: The hash policy: a cell's id from its configuration (`identity.cell_hash`).
cell_id_of = cell_hash

__all__ = ["CELL_ID_LENGTH", "CellMeasurement", "CellSpec", "cell_id_of"]


class CellMeasurement(MeasurementConfig):
    """A cell's `measurement` section: the study's, with one value of each GPU axis (the
    study's lists of power limits and clocks are crossed into cells by the matrix)."""

    gpu_power_limit_w: float | None = Field(None, gt=0)  # type: ignore[assignment]
    gpu_sm_clock_mhz: ClockSetting | None = None  # type: ignore[assignment]
    gpu_memory_clock_mhz: ClockSetting | None = None  # type: ignore[assignment]
    #: Where GPU-settings markers and locks live (`telemetry.gpu_control`; None: its default).
    #: Not a study key: set by tests and tools that run cells by hand; never hashed.
    gpu_state_dir: str | None = None

    @field_validator("gpu_power_limit_w", "gpu_sm_clock_mhz", "gpu_memory_clock_mhz",
                     mode="before")
    @classmethod
    def _gpu_scalar_to_axis(cls, value: Any) -> Any:  # a cell holds one value: no axis
        return value

    @field_validator("gpu_sm_clock_mhz", "gpu_memory_clock_mhz")
    @classmethod
    def _clock_ranges_ordered(cls, value: Any) -> Any:
        if isinstance(value, list) and value[0] > value[1]:
            raise ValueError(f"clock range {value}: min must not exceed max")
        return value


class CellSpec(BaseModel):
    """One cell: model, backend, its settings (every one set: unset ones take the backend's
    settings defaults), workload and measurement sections (every key, with the study
    config's defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cell_id: str = ""
    model: dict[str, Any]
    backend: str
    settings: dict[str, Any]
    workload: WorkloadConfig
    measurement: CellMeasurement
    #: The workload file the pipeline built for this cell (`workload.build`; None: the
    #: measuring process builds the workload itself). An input of the job, not hashed: its
    #: content follows from `workload` and the model, which are.
    workload_file: str | None = None

    @field_validator("backend")
    @classmethod
    def _registered(cls, backend: str) -> str:
        if registry.find(backend) is None:
            raise ValueError(f"unknown backend {backend!r}; known: {', '.join(registry.names())}")
        return backend

    @model_validator(mode="after")
    def _settings_complete(self) -> CellSpec:
        filled = registry.get(self.backend).cell_settings(self.settings)
        if filled != self.settings:
            object.__setattr__(self, "settings", filled)
        return self

    @classmethod
    def of(cls, cell: CellSpec | dict[str, Any]) -> CellSpec:
        return cell if isinstance(cell, CellSpec) else cls.model_validate(cell)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON data (what `.cell.json` holds and provenance records); keys that are
        not study keys are left out while unset."""
        data = self.model_dump(mode="json")
        if data["measurement"].get("gpu_state_dir") is None:
            data["measurement"].pop("gpu_state_dir", None)
        if data.get("workload_file") is None:
            data.pop("workload_file", None)
        return data

    def identity(self) -> str:
        """The cell id its configuration gives (`cell_id_of`)."""
        data = self.as_dict()
        data.pop("workload_file", None)
        return cell_id_of(data)
