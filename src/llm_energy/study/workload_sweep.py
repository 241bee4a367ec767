"""The study's workload as sweep axes, and what a cell's rows say of its workload.

`dataset`, `concurrency` and `request_rate_per_s` take a list (`WorkloadSweep`, mixed into the
study's workload class `study.config.StudyWorkloadConfig`); `WorkloadSweep.variants` gives one
workload section per combination a backend uses (`study.matrix`). `workload_columns` gives the
values of the workload columns declared in `results.schema.WORKLOAD`.
"""

from __future__ import annotations

import itertools
import json
from typing import Annotated, Any

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from llm_energy.study.base import each_value_once
from llm_energy.study.workload_spec import DatasetConfig, _as_list, _Strict

#: Workload keys a study may sweep (a list of values: one cell per value).
SWEEP_AXES = ("dataset", "concurrency", "request_rate_per_s")
#: Keys of the arrival process: only server backends use them (an offline engine takes every
#: request at once), so they are not crossed into offline cells.
ARRIVAL_KEYS = ("arrival", "concurrency", "request_rate_per_s", "burstiness", "trace_path")
#: An offline cell's arrival keys when the study sets a server-only arrival or sweeps one.
ALL_AT_ONCE = {"arrival": "closed", "concurrency": None, "request_rate_per_s": None,
               "burstiness": None, "trace_path": None}


class WorkloadSweep(_Strict):
    """The study's `workload:` as sweep axes: `dataset`, `concurrency` and `request_rate_per_s`
    take a list as well as one value; cells cross them (`variants`). Mixed into the study's
    workload class (`study.config.StudyWorkloadConfig`); a cell holds one value of each."""

    dataset: DatasetConfig | Annotated[list[DatasetConfig], Field(min_length=1)] | None = Field(
        None, description="a local dataset, or a list of them (a sweep axis); none: the "
        "built-in corpus")
    concurrency: Annotated[int, Field(gt=0)] | Annotated[
        list[Annotated[int, Field(gt=0)]], Field(min_length=1)] | None = Field(
        None, description="closed loop: requests in flight (a list: a sweep axis); default: "
        "all at once")
    request_rate_per_s: Annotated[float, Field(gt=0)] | Annotated[
        list[Annotated[float, Field(gt=0)]], Field(min_length=1)] | None = Field(
        None, description="poisson, gamma, constant: mean arrival rate, requests per second "
        "(a list: a sweep axis)")

    @field_validator(*SWEEP_AXES)
    @classmethod
    def _each_value_once(cls, value: Any) -> Any:
        if isinstance(value, list):  # the same cell twice: a wrong count in the matrix
            each_value_once([json.dumps(v.model_dump(mode="json") if isinstance(v, BaseModel)
                                        else v, sort_keys=True) for v in value])
        return value

    @field_validator("concurrency")
    @classmethod
    def _closed_loop_sweep(cls, value: Any, info: ValidationInfo) -> Any:
        arrival = info.data.get("arrival", "closed")
        if isinstance(value, list) and arrival != "closed":
            raise ValueError("a list sweeps the closed loop's requests in flight; arrival "
                             f"{arrival!r} does not use concurrency (sweep request_rate_per_s)")
        return value

    def swept(self) -> list[str]:
        """The workload keys given as lists, in `SWEEP_AXES` order."""
        return [k for k in SWEEP_AXES if isinstance(getattr(self, k), list)]

    def variants(self, server: bool) -> list[dict[str, Any]]:
        """One workload section (JSON, one value per key) per combination of the swept keys
        a backend uses: every key for a server cell; for an offline cell the arrival keys are
        not crossed and, when the study sets a server-only arrival or sweeps one, are
        `ALL_AT_ONCE` (what an offline engine does). A study without sweeps gives its own
        section unchanged (so its cell ids stay as they were)."""
        base = self.model_dump(mode="json")
        offline_all_at_once = not server and (
            base.get("arrival") != "closed"
            or any(isinstance(base.get(k), list) for k in ARRIVAL_KEYS))
        if offline_all_at_once:
            base.update(ALL_AT_ONCE)
        axes = {k: base[k] for k in SWEEP_AXES if isinstance(base.get(k), list)}
        return [{**base, **dict(zip(axes, values))} for values in itertools.product(*axes.values())]

    @property
    def datasets(self) -> list[DatasetConfig]:
        return _as_list(self.dataset)


#: The `dataset` column's value for the built-in corpus (no `workload.dataset`).
BUILTIN_CORPUS = "builtin:python-stdlib"
#: The `arrival` column's value for an offline engine's cells.
ALL_AT_ONCE_ARRIVAL = "all-at-once"


def length_policy_text(policy: Any) -> str:
    """A length policy as a short string: `64`, `dataset`, `lognormal(mean=200, std=80,
    min=1, max=1024)`."""
    if isinstance(policy, dict):
        keys = [k for k in policy if k not in ("distribution", "min", "max")] + ["min", "max"]
        params = ", ".join(f"{k}={policy[k]:g}" if isinstance(policy[k], float)
                           else f"{k}={policy[k]}" for k in keys if k in policy)
        return f"{policy['distribution']}({params})"
    return str(policy)


def workload_columns(workload: dict[str, Any], server: bool) -> dict[str, Any]:
    """The workload columns of a cell's rows (declared in `results.schema.WORKLOAD`) from its
    workload section (JSON, one value per key) and whether its backend is a server: an
    offline engine's cells say `all-at-once` and have no concurrency or rate."""
    dataset = workload.get("dataset")
    arrival = workload.get("arrival", "closed") if server else ALL_AT_ONCE_ARRIVAL
    return {
        "dataset": dataset["path"] if isinstance(dataset, dict) else BUILTIN_CORPUS,
        "arrival": arrival,
        "concurrency": workload.get("concurrency") if arrival == "closed" else None,
        "request_rate_per_s": workload.get("request_rate_per_s") if server else None,
        "burstiness": workload.get("burstiness") if server else None,
        "input_length_policy": length_policy_text(workload.get("input_tokens")),
        "output_length_policy": length_policy_text(workload.get("output_tokens")),
    }
