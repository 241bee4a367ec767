"""Study configuration: pydantic models, validated before any job exists.

Every list-valued backend field is a sweep axis; scalars are fixed for all cells. Errors are
reported as one line naming the key (`ConfigError`), never as a traceback.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from llm_energy.backends import registry
from llm_energy.backends.registry import BackendSpec
from llm_energy.backends.settings import BackendSettings
from llm_energy.study.base import (  # noqa: F401 - re-exported: config's names
    _HUB_PART,
    _NAME_PATTERN,
    _OPERATIONAL,
    ANALYSIS_ONLY,
    CONTEXT_LIMIT_KEYS,
    HUB_ID_PATTERN,
    MEASURED,
    OPERATIONAL,
    ROLE_KEY,
    SCHEMA_VERSION,
    ConfigError,
    Device,
    EnergySourceName,
    _as_axis,
    _Strict,
    each_value_once,
)
from llm_energy.study.errors import one_line
from llm_energy.study.model_spec import (  # noqa: F401 - re-exported: config's names
    DemoModelSpec,
    GgufModelSpec,
    ModelConfig,
)
from llm_energy.study.sections import (  # noqa: F401 - re-exported: config's names
    GPU_AXES,
    MAX_RETRIES,
    MAX_TIMEOUT_S,
    CarbonConfig,
    ClockSetting,
    FiguresConfig,
    MeasurementConfig,
    ReferenceConfig,
    ReferenceKind,
    SloConfig,
    WarmupConfig,
)
from llm_energy.study.workload_spec import WorkloadSpec, longest_tokens
from llm_energy.study.workload_sweep import WorkloadSweep

# ---------------------------------------------------------------- backends
# Each backend's settings class is declared with the backend (backends/<name>_spec.py) and
# registered (backends/registry.py); the `backends:` section is built from the registry, so
# a registered backend's section is accepted here without editing this module.


class _BackendsBase(_Strict):
    @classmethod
    def names(cls) -> list[str]:
        """Backend names as written in the config and used for cells and environments."""
        return [field.alias or name for name, field in cls.model_fields.items()]

    def enabled(self) -> dict[str, BackendSettings]:
        return {
            field.alias or name: cfg
            for name, field in type(self).model_fields.items()
            if (cfg := getattr(self, name)) is not None and cfg.enabled
        }


def backends_model(specs: tuple[BackendSpec, ...]) -> type[_BackendsBase]:
    """The `backends:` section for these backends: one optional field per backend, keyed by
    its name (hyphenated names are aliases of their Python field names)."""
    fields: dict[str, Any] = {
        spec.field_name: (spec.config | None,
                          Field(None, alias=spec.name if spec.name != spec.field_name else None))
        for spec in specs
    }
    return create_model("BackendsConfig", __base__=_BackendsBase, **fields)


BackendsConfig = backends_model(tuple(registry.builtin_specs().values()))


# ---------------------------------------------------------------- workload + protocol


class WorkloadConfig(WorkloadSpec):
    """The same prompts, lengths and arrivals for every backend: `WorkloadSpec`'s keys (built
    once into a workload file by `llm_energy.workload.build`) and the client's time limit."""

    request_timeout_s: float = Field(600.0, gt=0, description="per-request HTTP limit, seconds",
                                     json_schema_extra=_OPERATIONAL)



class StudyWorkloadConfig(WorkloadSweep, WorkloadConfig):
    """The study's `workload:`, with sweep axes (`study.workload_sweep`)."""


#: Top-level keys that hold a value, not a section.
SCALAR_KEYS = ("schema_version", "name")


class StudyConfig(_Strict):
    schema_version: Literal[1] = 1
    # A label of the study's outputs (report title, export task), in no cell.
    name: str = Field("study", pattern=_NAME_PATTERN, json_schema_extra={ROLE_KEY: ANALYSIS_ONLY})
    models: Annotated[list[ModelConfig], Field(min_length=1)]
    backends: BackendsConfig
    workload: StudyWorkloadConfig = StudyWorkloadConfig()
    measurement: MeasurementConfig = MeasurementConfig()
    carbon: CarbonConfig = CarbonConfig()
    slo: SloConfig | None = None
    figures: FiguresConfig = FiguresConfig()
    # Published measurements drawn beside the cells (figures, report): in no cell.
    references: list[ReferenceConfig] = Field(default_factory=list,
                                              json_schema_extra={ROLE_KEY: ANALYSIS_ONLY})

    @model_validator(mode="before")
    @classmethod
    def _no_empty_section(cls, data: Any) -> Any:
        """A section written with nothing under it (`figures:`, `slo:`: YAML null) is refused
        like any other value of the wrong type, one line naming it: remove the key for its
        default (no SLO, no references), or give its keys."""
        if isinstance(data, dict):
            for key, value in data.items():
                if value is None and key in cls.model_fields and key not in SCALAR_KEYS:
                    fix = ("it is required: give its entries" if cls.model_fields[key].is_required()
                           else "remove the key for its default, or give its keys")
                    raise ValueError(f"{key}: the section is empty; {fix}")
        return data

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
                             f"{', '.join(registry.names())}")
        for key, backend in backends.enabled().items():
            for setting, values in backend.axes().items():
                each_value_once([json.dumps(v, sort_keys=True, default=str) for v in values],
                                f"backends.{key}.{setting}: ")
        return backends

    @model_validator(mode="after")
    def _references_fit(self) -> StudyConfig:
        labels = [r.label for r in self.references]
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        if repeated:
            raise ValueError(f"references.label: {repeated} given twice; each reference needs "
                             "a label of its own")
        names = {m.name for m in self.models}
        for ref in self.references:
            unknown = sorted(set(ref.models) - names)
            if unknown:
                raise ValueError(f"references.models: {unknown} of reference '{ref.label}' "
                                 f"are not models of the study ({', '.join(sorted(names))})")
        return self

    def reference_model_ids(self) -> dict[str, str]:
        """Study model name -> the model id a reference row must have to match it: its
        `hub_id`, else its name (a reference's `models:` overrides this per reference)."""
        return {m.name: m.hub_id or m.name for m in self.models}

    @field_validator("name")
    @classmethod
    def _not_a_results_file(cls, name: str) -> str:
        if name.lower().endswith(".json"):  # results/index.json lists the studies
            raise ValueError(f"{name!r} would be a folder beside results/index.json; "
                             "give a name that does not end in .json")
        return name

    @model_validator(mode="after")
    def _arrival_sweep_has_a_server(self) -> StudyConfig:
        """A concurrency or rate sweep only changes server cells (offline engines take every
        request at once): without one it would measure the same cells and say nothing."""
        swept = [k for k in ("concurrency", "request_rate_per_s") if k in self.workload.swept()]
        if not swept:
            return self
        for key, backend in self.backends.enabled().items():
            spec = registry.get(key)
            modes = backend.axes().get(registry.MODE_SETTING) \
                or [backend.fixed().get(registry.MODE_SETTING)]
            if any(spec.is_server({registry.MODE_SETTING: m}) for m in modes):
                return self
        raise ValueError(f"workload.{swept[0]}: a sweep needs a server backend (an offline "
                         "engine takes every request at once); enable one or give one value")

    @model_validator(mode="after")
    def _fits_allocation(self) -> StudyConfig:
        if self.measurement.device != "cuda":
            return self
        for key, backend in self.backends.enabled().items():
            setting = registry.get(key).parallel_setting
            if setting is None:
                continue
            too_big = [tp for tp in _as_axis(getattr(backend, setting))
                       if tp > self.measurement.gpus_per_cell]
            if too_big:
                raise ValueError(
                    f"backends.{key}.{setting}: {too_big} exceeds "
                    f"measurement.gpus_per_cell={self.measurement.gpus_per_cell}; raise "
                    f"gpus_per_cell or lower {setting}")
        return self

    @model_validator(mode="after")
    def _known_quantization(self) -> StudyConfig:
        """A quantisation name the engine does not know fails here, before any job, also
        where the cell would be pruned on this device."""
        for key, backend in self.backends.enabled().items():
            spec = registry.get(key)
            if spec.quantization_setting is None or spec.quantization_names is None:
                continue
            known = spec.quantization_names()
            unknown = [q for q in _as_axis(getattr(backend, spec.quantization_setting))
                       if q is not None and q not in known]
            if unknown:
                raise ValueError(
                    f"backends.{key}.{spec.quantization_setting}: {unknown} not known to "
                    f"{key}; known: {', '.join(sorted(known))}")
        return self

    @model_validator(mode="after")
    def _fits_context(self) -> StudyConfig:
        """Prompt + output tokens must fit every context limit known before any job: each
        backend's context setting and each model's position limit. A dataset's own prompt
        lengths are known only once tokenised: without `max_input_tokens` the least a request
        can need (`min_input_tokens` + the longest output) is checked here, and the plan-time
        preflight (llm_energy.execution.preflight) builds the workload to check the rest."""
        workload = self.workload
        longest_out = longest_tokens(workload.output_tokens, None)
        if longest_out is None:
            return self  # each record's reply length: checked when the workload is built
        longest_in = longest_tokens(workload.input_tokens, workload.datasets)
        if longest_in is not None:
            key = ("workload.dataset.max_input_tokens" if workload.input_tokens == "dataset"
                   else "workload.input_tokens")
            need = longest_in + longest_out
            tokens = f"{key} + workload.output_tokens = {longest_in} + {longest_out} = {need}"
        else:
            shortest = min(d.min_input_tokens for d in workload.datasets)
            key, need = "workload.output_tokens", shortest + longest_out
            tokens = (f"workload.output_tokens {longest_out} + at least "
                      f"workload.dataset.min_input_tokens = {shortest} prompt token(s) = {need}")
        for name, backend in self.backends.enabled().items():
            setting = registry.get(name).context_setting
            if setting is None:
                continue
            for limit in _as_axis(getattr(backend, setting)):
                if limit is not None and need > limit:
                    raise ValueError(f"{_culprit(key, longest_out, limit)}: {tokens} exceeds "
                                     f"backends.{name}.{setting} = {limit}; raise {setting} "
                                     "or shorten the workload")
        for model in self.models:
            limit, where = model.context_limit()
            if limit is not None and need > limit:
                raise ValueError(f"{_culprit(key, longest_out, limit)}: {tokens} exceeds "
                                 f"{where} = {limit} of model '{model.name}'; shorten the "
                                 "workload")
        return self


def _culprit(key: str, longest_out: int, limit: int) -> str:
    """The key to name when prompt + output overflow a context limit: the output cap when it
    alone leaves no room for a prompt token, else `key` (the prompt side's)."""
    return "workload.output_tokens" if longest_out >= limit else key


@functools.lru_cache(maxsize=8)
def _study_model(extra_backends: str) -> type[StudyConfig]:
    if not extra_backends:
        return StudyConfig
    section = backends_model(tuple(registry.specs().values()))
    return create_model("StudyConfig", __base__=StudyConfig, backends=(section, ...))


def study_model() -> type[StudyConfig]:
    """`StudyConfig` with the `backends:` section of the backends registered now (extra
    backends included); a bad `LLM_ENERGY_EXTRA_BACKENDS` is a `ConfigError`."""
    try:
        return _study_model(registry.extra_backends())
    except registry.ExtraBackendsError as exc:
        raise ConfigError(str(exc)) from None


# ---------------------------------------------------------------- loading


def validate_study(data: Any) -> StudyConfig:
    if data is None:
        raise ConfigError("the study config is empty: it needs at least 'models' and 'backends'")
    if not isinstance(data, dict):
        raise ConfigError(
            f"the study config must be a mapping of keys (models, backends, ...), "
            f"not a {type(data).__name__}"
        )
    try:
        return study_model().model_validate(data)
    except ValidationError as exc:
        raise ConfigError(one_line(exc.errors(), data)) from None


#: Keys that hold a file or directory path: (section path, key); `*` is every list item.
PATH_KEYS = ((("models", "*"), "path"), (("models", "*", "gguf"), "path"),
             (("workload", "dataset"), "path"), (("workload",), "trace_path"))


def rebase_paths(data: Any, base: Path) -> Any:
    """`data` (a study as loaded from YAML) with its relative paths (`PATH_KEYS`) made
    relative to `base`: for the workflow's default study run from another working directory,
    whose paths name the workflow's own files."""
    def visit(node: Any, parts: tuple[str, ...], key: str) -> None:
        if not parts:
            value = node.get(key) if isinstance(node, dict) else None
            if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
                node[key] = str(base / value)
            return
        head, rest = parts[0], parts[1:]
        children = (node if isinstance(node, list) else []) if head == "*" else \
            [node.get(head)] if isinstance(node, dict) else []
        for child in children:
            visit(child, rest, key)

    for parts, key in PATH_KEYS:
        visit(data, parts, key)
    return data


def load_study(path: str | Path, base: Path | None = None) -> StudyConfig:
    """The study of a YAML file; with `base`, its relative paths are taken from there
    (`rebase_paths`) instead of the working directory."""
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
    return validate_study(rebase_paths(data, base) if base is not None else data)


def json_schema() -> dict[str, Any]:
    return study_model().model_json_schema()
