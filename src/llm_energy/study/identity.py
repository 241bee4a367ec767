"""Cell identity: which settings make a cell what it is.

A config value is one of three kinds, declared once on its pydantic field (or on a whole
section) as `json_schema_extra={"identity": ...}` and read here by `role_of` only:

- **measured** (unmarked fields): changes what a cell measures. It is part of the cell id
  (`cell_hash`) and of the measure rule's `cell` param (`identity`), so a change gives a new
  cell and Snakemake measures it;
- **operational** (job limits, retries, idle-cache housekeeping): neither hashed nor a
  param; a new value applies to the cells measured from then on and reruns nothing;
- **analysis-only** (`carbon:`): applied after measuring; never part of a cell.

`identity(cell_config)` is what is hashed. It must survive the project's growth, so that an
upgrade does not re-measure finished studies:

- a measured key added after release 1 is left out while it has its default, so adding a
  key with a default changes no id (never change such a key's default later: cells that
  relied on the old one would keep their ids);
- the keys of release 1 (`RELEASE_1_KEYS`) are always written, as release 1 hashed the
  whole resolved configuration; operational keys among them are written at their release-1
  values (`RELEASE_1_OPERATIONAL`) whatever the config says. Studies measured with
  release 1 and default operational settings keep their cell ids and their Snakemake
  params, so nothing is re-measured.
"""

from __future__ import annotations

import functools
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from llm_energy.backends import registry
from llm_energy.study.config import (
    ANALYSIS_ONLY,
    MEASURED,
    OPERATIONAL,
    ROLE_KEY,
    MeasurementConfig,
    ModelConfig,
    StudyConfig,
    WorkloadConfig,
)

CELL_ID_LENGTH = 12
ROLES = (MEASURED, OPERATIONAL, ANALYSIS_ONLY)

_DEMO = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
         "num_kv_heads", "max_position_embeddings", "seed")

#: Every key a cell's configuration had in release 1 (schema_version 1), by section; `None`
#: marks a leaf. Frozen: never add to it (new keys are left out at their default instead).
RELEASE_1_KEYS: dict[str, Any] = {
    "model": {"name": None, "demo": dict.fromkeys(_DEMO), "path": None, "hub_id": None,
              "trust_remote_code": None},
    "backend": None,
    # Per backend: its spec's `release_1_settings` (backend registry), see `_release_1_settings`.
    "workload": dict.fromkeys((
        "num_prompts", "input_tokens", "output_tokens", "seed", "arrival", "concurrency",
        "request_rate_per_s", "request_timeout_s")),
    "measurement": {
        **dict.fromkeys((
            "device", "cycles", "idle_duration_s", "cooldown_s", "sampler_hz",
            "energy_source", "cpu_power_per_core_w", "threads", "gpus_per_cell", "timeout_s",
            "retries", "idle_cache_ttl_s", "idle_cache_dir", "idle_revalidate_s",
            "idle_drift_tolerance", "temperature_drift_c")),
        "warmup": dict.fromkeys(("min_runs", "max_runs", "cv_threshold")),
    },
}

#: Operational keys of release 1 at their release-1 defaults: written into every hash in
#: place of the configured value, so that ids of release-1 studies stay as they were.
RELEASE_1_OPERATIONAL: dict[str, dict[str, Any]] = {
    "workload": {"request_timeout_s": 600.0},
    "measurement": {"timeout_s": 1800.0, "retries": 0, "idle_cache_ttl_s": 3600.0,
                    "idle_cache_dir": "results/.idle-cache", "idle_revalidate_s": 1.0,
                    "idle_drift_tolerance": 0.1},
}

#: Keys whose default (None) means "the value of another key of the section": set to that
#: value, they are at their default (hashed alike, so writing the default out moves no id).
DEFAULT_IS_KEY: dict[str, dict[str, str]] = {"measurement": {"max_cycles": "cycles"}}


# ---------------------------------------------------------------- roles


def _section_class(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model of a field's annotation (`X`, `X | None`), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(annotation)
                 if isinstance(a, type) and issubclass(a, BaseModel)]
        return found[0] if len(found) == 1 else None
    return None


def _declared(extra: Any) -> str | None:
    role = extra.get(ROLE_KEY) if isinstance(extra, dict) else None
    if role is not None and role not in ROLES:
        raise ValueError(f"unknown role {role!r}: one of {ROLES}")
    return role


def role_of(model: type[BaseModel], name: str) -> str:
    """`measured`, `operational` or `analysis-only` for field `name` of `model`: the field's
    own mark, else its section's (the class of a nested model), else `measured`."""
    field: FieldInfo = model.model_fields[name]
    role = _declared(field.json_schema_extra)
    if role is None and (section := _section_class(field.annotation)) is not None:
        role = _declared(section.model_config.get("json_schema_extra"))
    return role or MEASURED


def roles(model: type[BaseModel] = StudyConfig, prefix: str = "") -> dict[str, str]:
    """Dotted key -> role for every config key under `model` (default: the whole study;
    backends under `backends.<name>.`), e.g. `{"measurement.timeout_s": "operational"}`."""
    out: dict[str, str] = {}
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        role = role_of(model, name)
        section = _section_class(field.annotation)
        if section is None and typing.get_origin(field.annotation) is list:
            section = _section_class(typing.get_args(field.annotation)[0])  # models: [...]
        if section is not None and role == MEASURED:
            out.update(roles(section, key + "."))
        else:
            out[key] = role
    return out


# ---------------------------------------------------------------- identity


def _backend_class(backend: str) -> type[BaseModel] | None:
    """The backend's settings class (backend registry), None for an unregistered name."""
    spec = registry.find(backend)
    return spec.config if spec is not None else None


def _release_1_settings(backend: str) -> dict[str, None] | None:
    """The backend's settings that release 1 hashed (`BackendSpec.release_1_settings`):
    always written; its newer settings are left out at their default."""
    spec = registry.find(backend)
    return dict.fromkeys(spec.release_1_settings) if spec is not None else None


_NO_DEFAULT = object()


@dataclass(frozen=True)
class _Key:
    role: str
    section: type[BaseModel] | None   # a nested model's class
    default: Any                      # JSON form; _NO_DEFAULT when required


@functools.cache
def _keys(model: type[BaseModel]) -> dict[str, _Key]:
    """Field name (as `model_dump` writes it) -> what `identity` needs of it; once per class."""
    out = {}
    for name, field in model.model_fields.items():
        default = _NO_DEFAULT
        if not field.is_required():
            default = field.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                default = default.model_dump(mode="json")
        out[name] = _Key(role_of(model, name), _section_class(field.annotation), default)
    return out


def _at_default(key: _Key, value: Any) -> bool:
    if key.default is _NO_DEFAULT:
        return False
    # A sweep axis: the cell holds one value of it; its default is a one-value list.
    if isinstance(key.default, list) and not isinstance(value, list):
        return len(key.default) == 1 and key.default[0] == value
    return key.default == value


def _measured(values: Mapping[str, Any], model: type[BaseModel] | None,
              release_1: Mapping[str, Any] | None, pinned: Mapping[str, Any]) -> dict[str, Any]:
    release_1 = release_1 or {}
    keys = _keys(model) if model is not None else {}
    out: dict[str, Any] = {}
    for name, value in values.items():
        key = keys.get(name)
        if key is None:                # not a config field: as it is
            out[name] = value
            continue
        if key.role != MEASURED:
            if name in pinned:
                out[name] = pinned[name]
            continue
        new = name not in release_1
        if new and _at_default(key, value):
            continue
        if key.section is not None and isinstance(value, Mapping):
            value = _measured(value, key.section, release_1.get(name), {})
            if new and not value:      # a new section with only defaulted keys
                continue
        out[name] = value
    return out


def _defaults_spelled_out(section: str, values: Mapping[str, Any]) -> Mapping[str, Any]:
    """`values` with each `DEFAULT_IS_KEY` key that equals its other key back at None."""
    same = {name: None for name, other in DEFAULT_IS_KEY.get(section, {}).items()
            if values.get(name) is not None and values[name] == values.get(other)}
    return {**values, **same} if same else values


def identity(cell_config: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies a cell: its resolved configuration (`model`, `backend`, `settings`,
    `workload`, `measurement` as `matrix.expand` builds it) with operational and
    analysis-only keys taken out (release-1 operational keys pinned to their release-1
    values) and keys newer than release 1 left out at their default (`DEFAULT_IS_KEY`: also
    at the value their default stands for). Key order is kept.
    This is the measure rule's `cell` param and what `cell_hash` hashes."""
    backend = str(cell_config.get("backend"))
    sections: dict[str, tuple[type[BaseModel] | None, Any]] = {
        "model": (ModelConfig, RELEASE_1_KEYS["model"]),
        "settings": (_backend_class(backend), _release_1_settings(backend)),
        "workload": (WorkloadConfig, RELEASE_1_KEYS["workload"]),
        "measurement": (MeasurementConfig, RELEASE_1_KEYS["measurement"]),
    }
    out: dict[str, Any] = {}
    for key, value in cell_config.items():
        if key == "cell_id":
            continue
        if key in sections and isinstance(value, Mapping):
            model, release_1 = sections[key]
            value = _defaults_spelled_out(key, value)
            value = _measured(value, model, release_1, RELEASE_1_OPERATIONAL.get(key, {}))
        elif key in StudyConfig.model_fields and role_of(StudyConfig, key) != MEASURED:
            continue                   # e.g. an analysis-only section copied into a cell
        out[key] = value
    return out


def canonical(data: Any) -> str:
    """Key-sorted compact JSON: the same data always gives the same text."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def cell_hash(cell_config: Mapping[str, Any]) -> str:
    """The cell id: the first 12 hex digits of the SHA-256 of `identity(cell_config)` as
    canonical JSON. The same measured configuration always gives the same id."""
    return hashlib.sha256(canonical(identity(cell_config)).encode()).hexdigest()[:CELL_ID_LENGTH]
