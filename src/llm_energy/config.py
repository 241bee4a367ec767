"""Study configuration: pydantic models, validated before any job exists.

Every list-valued backend field is a sweep axis; scalars are fixed for all cells. Errors are
reported as one line naming the key (`ConfigError`), never as a traceback.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 1

Dtype = Literal["float32", "bfloat16", "float16"]
Device = Literal["cpu", "cuda"]
EnergySourceName = Literal["auto", "nvml-counter", "amdsmi", "nvml-power", "rapl", "estimate"]

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class ConfigError(ValueError):
    """A study configuration is invalid; `str()` is one line naming the key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _as_list(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


PositiveIntAxis = Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=1)]
DtypeAxis = Annotated[list[Dtype], Field(min_length=1)]
BoolAxis = Annotated[list[bool], Field(min_length=1)]


# ---------------------------------------------------------------- models


class DemoModelSpec(_Strict):
    """A tiny Llama-architecture model with random weights, built locally (no download)."""

    vocab_size: int = Field(8000, ge=300, le=131072)
    hidden_size: int = Field(256, gt=0)
    intermediate_size: int = Field(1024, gt=0)
    num_layers: int = Field(4, gt=0)
    num_heads: int = Field(4, gt=0)
    num_kv_heads: int = Field(4, gt=0)
    max_position_embeddings: int = Field(2048, gt=0)
    seed: int = 0

    @model_validator(mode="after")
    def _heads_divide(self) -> DemoModelSpec:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        return self


class ModelConfig(_Strict):
    """Exactly one of `demo`, `path` or `hub_id`."""

    name: str = Field(pattern=_NAME_PATTERN)
    demo: DemoModelSpec | None = None
    path: str | None = None
    hub_id: str | None = None
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        given = [k for k in ("demo", "path", "hub_id") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'demo', 'path' or 'hub_id'")
        return self

    @field_validator("path")
    @classmethod
    def _path_exists(cls, value: str | None) -> str | None:
        if value is not None and not (Path(value).expanduser() / "config.json").is_file():
            raise ValueError(f"no model directory with a config.json at {value}: give the "
                             "directory written by save_pretrained")
        return value

    @property
    def kind(self) -> str:
        return "demo" if self.demo else "path" if self.path else "hub"


# ---------------------------------------------------------------- backends


class _BackendAxes(_Strict):
    """Base for per-backend sweeps: list fields are axes, crossed with each other."""

    enabled: bool = True

    @field_validator("*", mode="before")
    @classmethod
    def _scalar_to_axis(cls, value: Any, info: Any) -> Any:
        field = cls.model_fields[info.field_name]
        if str(field.annotation).startswith("list") or "list[" in str(field.annotation):
            return _as_list(value)
        return value

    def axes(self) -> dict[str, list[Any]]:
        return {
            name: list(getattr(self, name))
            for name in type(self).model_fields
            if isinstance(getattr(self, name), list)
        }

    def fixed(self) -> dict[str, Any]:
        return {
            name: getattr(self, name)
            for name in type(self).model_fields
            if name != "enabled" and not isinstance(getattr(self, name), list)
        }


class TransformersConfig(_BackendAxes):
    batch_size: PositiveIntAxis = [1]
    dtype: DtypeAxis = ["float32"]
    attn_implementation: Annotated[
        list[Literal["sdpa", "eager"]], Field(min_length=1)
    ] = ["sdpa"]
    torch_compile: BoolAxis = [False]


class VllmConfig(_BackendAxes):
    max_num_seqs: PositiveIntAxis = [8]
    dtype: DtypeAxis = ["bfloat16"]
    quantization: Annotated[list[str | None], Field(min_length=1)] = [None]
    tensor_parallel_size: PositiveIntAxis = [1]
    max_num_batched_tokens: Annotated[list[Annotated[int, Field(gt=0)] | None], Field(min_length=1)] = [None]
    enable_prefix_caching: BoolAxis = [False]
    enforce_eager: BoolAxis = [False]
    max_model_len: int = Field(1024, gt=0)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    mode: Annotated[list[Literal["offline", "server"]], Field(min_length=1)] = ["offline"]


class BackendsConfig(_Strict):
    transformers: TransformersConfig | None = None
    vllm: VllmConfig | None = None

    def enabled(self) -> dict[str, _BackendAxes]:
        return {
            name: cfg
            for name in type(self).model_fields
            if (cfg := getattr(self, name)) is not None and cfg.enabled
        }


# ---------------------------------------------------------------- workload + protocol


class WorkloadConfig(_Strict):
    """The same prompts, truncation and output length for every backend."""

    num_prompts: int = Field(16, gt=0, description="requests per cycle")
    input_tokens: int = Field(64, gt=0, description="prompt length after truncation, tokens")
    output_tokens: int = Field(32, gt=0, description="max_new_tokens with EOS ignored")
    seed: int = 0


class WarmupConfig(_Strict):
    min_runs: int = Field(1, ge=0)
    max_runs: int = Field(5, ge=0)
    cv_threshold: float = Field(0.05, gt=0)

    @model_validator(mode="after")
    def _order(self) -> WarmupConfig:
        if self.max_runs < self.min_runs:
            raise ValueError("max_runs must be >= min_runs")
        return self


class MeasurementConfig(_Strict):
    device: Device = "cpu"
    cycles: int = Field(3, gt=0)
    warmup: WarmupConfig = WarmupConfig()
    idle_duration_s: float = Field(2.0, ge=0)
    cooldown_s: float = Field(0.0, ge=0)
    sampler_hz: float = Field(10.0, gt=0, le=1000)
    energy_source: EnergySourceName = "auto"
    cpu_power_per_core_w: float = Field(
        10.0, gt=0, description="per-core power of the 'estimate' CPU model at 100% use"
    )
    threads: int | None = Field(None, gt=0, description="torch threads; default: all cores")
    gpus_per_cell: int = Field(1, gt=0, description="GPUs each cell requests on a cuda device")
    timeout_s: float = Field(1800.0, gt=0, description="per-cell wall-clock limit")
    retries: int = Field(0, ge=0, description="extra attempts for a failed cell")


class StudyConfig(_Strict):
    schema_version: Literal[1] = 1
    name: str = Field("study", pattern=_NAME_PATTERN)
    models: Annotated[list[ModelConfig], Field(min_length=1)]
    backends: BackendsConfig
    workload: WorkloadConfig = WorkloadConfig()
    measurement: MeasurementConfig = MeasurementConfig()

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        names = [m.name for m in models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate model name(s) {duplicates}: names must be unique")
        return models

    @field_validator("backends")
    @classmethod
    def _some_backend(cls, backends: BackendsConfig) -> BackendsConfig:
        if not backends.enabled():
            raise ValueError("no backend enabled: configure at least one of "
                             f"{', '.join(BackendsConfig.model_fields)}")
        return backends

    @model_validator(mode="after")
    def _fits_allocation(self) -> StudyConfig:
        vllm = self.backends.vllm
        if vllm is not None and vllm.enabled and self.measurement.device == "cuda":
            too_big = [tp for tp in vllm.tensor_parallel_size if tp > self.measurement.gpus_per_cell]
            if too_big:
                raise ValueError(
                    f"backends.vllm.tensor_parallel_size: {too_big} exceeds "
                    f"measurement.gpus_per_cell={self.measurement.gpus_per_cell}; raise "
                    "gpus_per_cell or lower tensor_parallel_size")
        return self


# ---------------------------------------------------------------- loading


def _location(loc: tuple[Any, ...], data: Any) -> str:
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            name = None
            if isinstance(node, list) and item < len(node) and isinstance(node[item], dict):
                name = node[item].get("name")
            parts[-1:] = [f"{parts[-1] if parts else ''}[{name if name else item}]"]
        elif item in ("function-after", "function-before") or "[" in str(item):
            continue
        else:
            parts.append(str(item))
        if isinstance(node, dict):
            node = node.get(item)
        elif isinstance(node, list) and isinstance(item, int) and item < len(node):
            node = node[item]
        else:
            node = None
    return ".".join(parts) or "<top level>"


def _format_error(error: dict[str, Any], data: Any) -> str:
    loc = tuple(error.get("loc", ()))
    # Union/tagged branches put type names into the location; keep the key path only.
    loc = tuple(p for p in loc if not (isinstance(p, str) and re.match(r"^[a-z_]+\[", p)))
    where = _location(loc, data)
    kind = error.get("type", "")
    message = error.get("msg", "invalid")
    if kind == "extra_forbidden" and loc[:1] == ("backends",) and len(loc) == 2:
        return (f"unknown key '{where}': not a backend; known backends: "
                f"{', '.join(BackendsConfig.model_fields)}")
    if kind == "extra_forbidden":
        return f"unknown key '{where}': remove it or check its spelling (see config/README.md)"
    if kind == "missing":
        return f"missing key '{where}': it is required (see config/README.md)"
    message = message.removeprefix("Value error, ")
    keyed = re.match(r"^([a-z_]+(?:\.[a-z_]+)+): (.*)$", message)
    if where == "<top level>" and keyed:
        where, message = keyed.groups()
    got = error.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    return f"invalid value for '{where}'{shown}: {message}"


def validate_study(data: Any) -> StudyConfig:
    if data is None:
        raise ConfigError("the study config is empty: it needs at least 'models' and 'backends'")
    if not isinstance(data, dict):
        raise ConfigError(
            f"the study config must be a mapping of keys (models, backends, ...), "
            f"not a {type(data).__name__}"
        )
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = _format_error(errors[0], data)
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ConfigError(first + more) from None


def load_study(path: str | Path) -> StudyConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    return validate_study(data)


def json_schema() -> dict[str, Any]:
    return StudyConfig.model_json_schema()
