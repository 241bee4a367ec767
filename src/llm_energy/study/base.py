"""Shared pieces of the study configuration: names, roles of keys in the cell hash
(`study.identity`), the strict model base and the error type."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
)

SCHEMA_VERSION = 1

Device = Literal["cpu", "cuda"]
EnergySourceName = Literal["auto", "nvml-counter", "amdsmi", "nvml-power", "rapl", "estimate"]

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

#: Keys of a transformers config.json that give the model's position limit, in order.
CONTEXT_LIMIT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")


#: Key of the field (or section) metadata that says what a config value is for; read by
#: `llm_energy.study.identity.role_of`, the one place that decides. Unmarked: measured.
ROLE_KEY = "identity"
#: Changes what a cell measures: part of the cell id and of the measure rule's params.
MEASURED = "measured"
#: A job limit or housekeeping setting: neither hashed nor a rerun trigger.
OPERATIONAL = "operational"
#: Applied after measuring (aggregation, figures): never re-measures a cell.
ANALYSIS_ONLY = "analysis-only"

_OPERATIONAL = {ROLE_KEY: OPERATIONAL}

#: A hub repository id as the hub accepts it (huggingface_hub's `validate_repo_id`):
#: `name` or `namespace/name`, each of ASCII letters, digits, `-`, `_`, `.`, at most 96
#: characters, not starting or ending with `-` or `.`; no `--` or `..`; not ending in `.git`.
_HUB_PART = r"(?![-.])[A-Za-z0-9_.-]{1,96}(?<![-.])"
HUB_ID_PATTERN = re.compile(rf"^(?:{_HUB_PART}/)?{_HUB_PART}$")


class ConfigError(ValueError):
    """A study configuration is invalid; `str()` is one line naming the key and the fix."""


class _Strict(BaseModel):
    # allow_inf_nan=False: every float of the config is finite (`.inf` would hang an idle
    # window or overflow a job's time limit; `.nan` compares false with every bound).
    # strict=True: YAML gives typed values, so `retries: true` or `timeout_s: "1800"` is a
    # typo, not a number (an int is still a float: `idle_duration_s: 2`).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


def _as_axis(value: Any) -> list[Any]:
    """A value or a list of values (an axis) as a list."""
    return value if isinstance(value, list) else [value]


def each_value_once(canonical: list[str], where: str = "") -> None:
    """Refuse a sweep that lists one value twice (the same cell twice: a wrong count in the
    matrix). `canonical`: the values as comparable text (JSON); `where`: the key, as a
    message prefix. Raises ValueError naming the repeated values."""
    repeated = sorted({s for s in canonical if canonical.count(s) > 1})
    if repeated:
        raise ValueError(f"{where}repeated value(s) {', '.join(repeated)}; list each value once")
