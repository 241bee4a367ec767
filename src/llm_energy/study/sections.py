"""Study config sections without backend or model knowledge: warmup, measurement (with the
GPU axes and the validity gate), carbon, SLO and references."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from llm_energy.study.base import (
    _OPERATIONAL,
    ANALYSIS_ONLY,
    ROLE_KEY,
    Device,
    EnergySourceName,
    _as_axis,
    _Strict,
    each_value_once,
)


class WarmupConfig(_Strict):
    min_runs: int = Field(1, ge=0, le=1000)
    max_runs: int = Field(5, ge=0, le=1000)
    cv_threshold: float = Field(0.05, gt=0)

    @model_validator(mode="after")
    def _order(self) -> WarmupConfig:
        if self.max_runs < self.min_runs:
            raise ValueError("max_runs must be >= min_runs")
        return self


#: Sanity bounds: a cell limit beyond a week, or more retries than this, is a typo (each
#: attempt may use the whole `timeout_s`, and a scheduler is asked for all of them at once).
MAX_TIMEOUT_S = 7 * 24 * 3600.0
MAX_RETRIES = 10


#: A locked clock in MHz: one value, or [min, max].
ClockSetting = Annotated[int, Field(gt=0)] | Annotated[
    list[Annotated[int, Field(gt=0)]], Field(min_length=2, max_length=2)]
#: Measurement keys that are sweep axes (crossed with the backends' axes in the matrix).
GPU_AXES = ("gpu_power_limit_w", "gpu_sm_clock_mhz", "gpu_memory_clock_mhz")


class MeasurementConfig(_Strict):
    device: Device = "cpu"
    gpu_power_limit_w: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1)] | None = \
        Field(None, description="axis: GPU power limit per GPU, W (device: cuda; set through Zeus, "
              "read back, restored after the cell); unset: the node's setting")
    gpu_sm_clock_mhz: Annotated[list[ClockSetting], Field(min_length=1)] | None = Field(
        None, description="axis: locked graphics (SM) clock, MHz: each value one locked clock "
        "or [min, max]; unset: not locked")
    gpu_memory_clock_mhz: Annotated[list[ClockSetting], Field(min_length=1)] | None = Field(
        None, description="axis: locked memory clock, MHz: each value one locked clock or "
        "[min, max]; unset: not locked")
    cycles: int = Field(3, gt=0, le=1000)
    warmup: WarmupConfig = WarmupConfig()

    idle_duration_s: float = Field(2.0, ge=0)
    cooldown_s: float = Field(0.0, ge=0)
    sampler_hz: float = Field(10.0, gt=0, le=1000)
    energy_source: EnergySourceName = "auto"
    cpu_power_per_core_w: float = Field(
        10.0, gt=0, description="per-core power of the 'estimate' CPU model at 100% use"
    )
    threads: int | None = Field(None, gt=0, le=1024,
                                description="torch threads; default: all cores")
    steady_state_rule: Literal["mlenergy", "batch-full"] = Field(
        "mlenergy", description="steady-state window: ML.ENERGY's RequestTracker rule (opens when "
        "max_num_seqs requests have their first token, closes when N - max_num_seqs - 1 have "
        "finished) or 'batch-full' (while the running requests fill the batch limit)")
    gpus_per_cell: int = Field(1, gt=0, le=64,
                               description="GPUs each cell requests on a cuda device")
    timeout_s: float = Field(1800.0, gt=0, le=MAX_TIMEOUT_S, json_schema_extra=_OPERATIONAL,
                             description="per-cell wall-clock limit, seconds")
    retries: int = Field(0, ge=0, le=MAX_RETRIES, json_schema_extra=_OPERATIONAL,
                         description="extra attempts for a failed cell")
    idle_cache_ttl_s: float = Field(
        3600.0, ge=0, json_schema_extra=_OPERATIONAL,
        description="reuse an idle baseline of this host+device for this long; 0: off")
    idle_cache_dir: str = Field(
        "results/.idle-cache", min_length=1, json_schema_extra=_OPERATIONAL,
        description="where cached idle baselines live (relative to the working directory)")
    idle_revalidate_s: float = Field(
        1.0, gt=0, json_schema_extra=_OPERATIONAL,
        description="short idle window that re-checks a cached baseline, seconds")
    idle_drift_tolerance: float = Field(
        0.10, gt=0, json_schema_extra=_OPERATIONAL,
        description="relative drift from the cached idle power that forces a re-measure")
    temperature_drift_c: float = Field(
        10.0, gt=0, description="device temperature change within a cycle, or across cycle starts, "
        "that is flagged")
    min_window_s: float | None = Field(
        None, ge=0, description="shortest energy window of a cycle, seconds: the workload repeats "
        "until the window reaches it; default: what the energy source needs (max(1 s, 10 sensor "
        "update periods)); never below 10 update periods")
    target_ci_rel: float | None = Field(
        0.05, gt=0, lt=1, description="validity gate: the 95% interval of J/token must be within "
        "its value +- this share; null: no interval target")
    max_cycles: int | None = Field(
        None, gt=0, le=1000, description="more cycles run after `cycles` until target_ci_rel is met, up "
        "to this many; default: cycles (no extra cycles)")
    stationarity_cv: float = Field(
        0.10, gt=0, description="cycles whose time per workload repetition or J/token vary "
        "with a larger coefficient of variation are flagged as not stationary")
    contention_cpu_cores: float = Field(
        0.25, ge=0, description="other processes using more cores than this on average "
        "during a cycle are flagged as contention")

    @field_validator(*GPU_AXES)
    @classmethod
    def _each_axis_value_once(cls, value: Any) -> Any:
        # 200 and 200.0 are one power limit: the same cell twice.
        if isinstance(value, list):
            each_value_once([json.dumps(v if isinstance(v, list) else float(v)) for v in value])
        return value

    @model_validator(mode="after")
    def _max_cycles_at_least_cycles(self) -> MeasurementConfig:
        if self.max_cycles is not None and self.max_cycles < self.cycles:
            raise ValueError(f"max_cycles={self.max_cycles} is below cycles={self.cycles}: "
                             "raise max_cycles or lower cycles")
        return self

    @field_validator(*GPU_AXES, mode="before")
    @classmethod
    def _gpu_scalar_to_axis(cls, value: Any) -> Any:
        return value if value is None else _as_axis(value)

    @field_validator("gpu_sm_clock_mhz", "gpu_memory_clock_mhz")
    @classmethod
    def _clock_ranges_ordered(cls, value: list[Any] | None) -> list[Any] | None:
        for item in value or []:
            if isinstance(item, list) and item[0] > item[1]:
                raise ValueError(f"clock range {item}: min must not exceed max")
        return value

    def gpu_axes(self) -> dict[str, list[Any]]:
        """The GPU axes that are set: key -> values (an unset key is no axis)."""
        return {k: list(getattr(self, k)) for k in GPU_AXES if getattr(self, k) is not None}


class CarbonConfig(_Strict):
    """Factors that turn measured energy into emissions and cost (applied in aggregation, so
    changing them never re-measures a cell). Defaults are round public figures: replace them
    with your site's (sources in config/README.md)."""

    model_config = ConfigDict(json_schema_extra={ROLE_KEY: ANALYSIS_ONLY})

    grid_intensity_g_per_kwh: float = Field(
        480.0, ge=0, description="grid carbon intensity, g CO2e per kWh (world 2023, Ember)")
    pue: float = Field(
        1.58, ge=1.0, description="data-centre power usage effectiveness (Uptime Institute 2023)")
    price_per_kwh: float = Field(
        0.13, ge=0, description="electricity price per kWh (US commercial 2023, EIA)")
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$", description="ISO 4217 code of the price")


class FiguresConfig(_Strict):
    """What the figures rule draws beyond the study figures (applied after measuring, so
    changing it never re-measures a cell)."""

    model_config = ConfigDict(json_schema_extra={ROLE_KEY: ANALYSIS_ONLY})

    power_per_cell: bool = Field(
        False, description="also pre-draw one power-over-time figure per cell "
        "(figures/power/<cell_id>.{pdf,svg,png}, ~0.7 s per cell: ~30 min at 10,000 cells); "
        "off by default: the report draws each cell's power over time in the page")


class SloConfig(_Strict):
    """Per-request latency service-level objectives (SLOs), applied in aggregation, so changing
    them never re-measures a cell. A request meets the SLO when it succeeded and each threshold
    set here holds for it (vLLM `bench serve --goodput`, aiperf `--goodput`); a threshold left
    unset is not checked. Definitions: docs/methodology.md#slos-and-goodput."""

    model_config = ConfigDict(json_schema_extra={ROLE_KEY: ANALYSIS_ONLY})

    # Each threshold's name is the requests.parquet column it bounds.
    ttft_ms: float | None = Field(None, gt=0, description="time to first token, ms, at most")
    tpot_ms: float | None = Field(
        None, gt=0, description="time per output token after the first, ms, at most (aiperf's "
        "per-request `inter_token_latency`); a one-token answer meets it")
    e2e_ms: float | None = Field(None, gt=0, description="end-to-end latency, ms, at most")
    target_attainment: float = Field(
        0.9, gt=0, le=1, description="share of a cell's requests that must meet the SLO for the "
        "cell to qualify in `llm-energy recommend` (0.9: the p90 request meets it)")

    @model_validator(mode="after")
    def _some_threshold(self) -> SloConfig:
        if not self.thresholds():
            raise ValueError("give at least one of ttft_ms, tpot_ms, e2e_ms")
        return self

    def thresholds(self) -> dict[str, float]:
        """requests.parquet column -> upper bound (ms), for the thresholds that are set."""
        return {name: value for name in type(self).model_fields
                if name.endswith("_ms") and (value := getattr(self, name)) is not None}


#: Formats a reference file may have (`references[].kind`); the readers are in
#: `llm_energy.analysis.reference` (one per kind).
ReferenceKind = Literal["mlenergy-leaderboard", "mlenergy-benchmark"]


class ReferenceConfig(_Strict):
    """Published measurements drawn and listed beside the study's cells (analysis-only: read
    by the figures and the report, never by a measurement). Definitions and how to get the
    files: docs/references.md."""

    kind: ReferenceKind = Field(description="the file's format")
    path: str = Field(description="the file: a leaderboard task file (`data/tasks/<task>.json` "
                      "of the ML.ENERGY leaderboard app) or an ML.ENERGY benchmark "
                      "`results.json`; relative to where snakemake runs")
    label: str = Field(pattern=r"^[^\n<>]{1,64}$",
                       description="name shown in figures and the report (`reference: <label>`)")
    models: dict[str, str] = Field(
        default_factory=dict, description="study model name -> the reference's model id, for "
        "models whose `hub_id` is not the reference's id (default: a model matches rows whose "
        "model id is its `hub_id`, else its name)")

    @field_validator("path")
    @classmethod
    def _readable(cls, value: str, info: ValidationInfo) -> str:
        """A leaderboard task file (small) is read here, so a wrong file fails before any job;
        a benchmark results.json (tens of MB with its requests) when the figures are drawn."""
        path = Path(value).expanduser()
        if not path.is_file():
            raise ValueError(f"no file at {value}")
        if path.suffix != ".json":
            raise ValueError(f"{value} is not a .json file")
        if info.data.get("kind") != "mlenergy-leaderboard":
            return value
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{value} is not readable JSON: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("configurations"), list):
            raise ValueError(f"{value} is not a leaderboard task file (no 'configurations' "
                             "list): give data/tasks/<task>.json of the app")
        return value
