"""The summary in the ML.ENERGY leaderboard app's data layout (`<out>/mlenergy/`).

The app (ml-energy/leaderboard, `src/types.ts`, `src/utils/dataLoader.ts`, the model-detail and
comparison modals) loads, under its `data/` folder:

- `index.json`: `IndexData` (`last_updated`, `tasks`, `architectures` {llm, mllm, diffusion →
  tasks}, `models` {model id → `ModelInfo`});
- `tasks/<task>.json`: `TaskData` with a list of `Configuration`s;
- `models/<model id with its first "/" as "__">__<task>.json`: `ModelDetail` (per-configuration
  metrics, parallelism and output-length histograms: 50 bins shared by the model's configurations).

This module writes those three (`write_mlenergy`) and a sidecar, `llm_energy.json`, with what the
app cannot show. Field meanings where this pipeline measures the same thing as ML.ENERGY:

- `energy_per_token_joules`, `avg_power_watts`, `output_throughput_tokens_per_sec`: the
  steady-state window's (ML.ENERGY's), ratios of sums over the cycles, so energy per token =
  power ÷ throughput exactly. Only cells with a steady state (stable ones) reach the app.
- `energy_per_request_joules`: `energy_per_token_joules` × `avg_output_len` (their rule);
  `avg_output_len`: output tokens ÷ requests.
- `median_itl_ms`, `p90/p95/p99_itl_ms`: inter-token latency percentiles (mean over cycles).
- `avg_batch_size`: time average of running requests over the steady window.
- `gpu_model`: the device, named honestly: the GPU's name when its energy is GPU-only and
  measured (as on the leaderboard); otherwise the name says the device, the domains and whether
  the energy was measured or estimated, e.g. "CPU: AMD EPYC 7B13 (estimated CPU energy)" with
  `num_gpus` 0, or "NVIDIA H100 80GB HBM3 (measured GPU+CPU+DRAM energy)".
- `total_params_billions`, `activated_params_billions`, `architecture`: from the checkpoint
  (`backends.checkpoint_facts`); `weight_precision`: the cell's dtype.

Left out of the app files (listed with the reason in the sidecar, with the full configuration
where there is one): failed cells; cells that fail the leaderboard's stability rule (the app has
no `is_stable` filter: the leaderboard ships stable runs only); cells missing a value the app's
types require (e.g. parameter counts of a checkpoint without safetensors). Each configuration
carries this pipeline's extra fields in one namespaced object, `llm_energy` (cell id, settings,
energy source and scope, window, intervals, `total_energy_joules` of the steady window, ...)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llm_energy.backends import registry
from llm_energy.backends.checkpoint_facts import ModelFacts
from llm_energy.results import schema

# The app's `Configuration` fields (src/types.ts), in its order.
APP_FIELDS = (
    "model_id", "nickname", "gpu_model", "num_gpus", "total_params_billions",
    "activated_params_billions", "architecture", "weight_precision", "max_num_seqs",
    "tensor_parallel", "expert_parallel", "data_parallel", "energy_per_token_joules",
    "energy_per_request_joules", "avg_output_len", "avg_power_watts", "median_itl_ms",
    "output_throughput_tokens_per_sec", "p90_itl_ms", "p95_itl_ms", "p99_itl_ms",
    "avg_batch_size",
)
#: `ModelConfiguration` (the model-detail file) takes these from the configuration.
DETAIL_FIELDS = (
    "gpu_model", "num_gpus", "max_num_seqs", "energy_per_token_joules",
    "energy_per_request_joules", "avg_output_len", "avg_power_watts", "median_itl_ms",
    "p90_itl_ms", "p95_itl_ms", "p99_itl_ms", "output_throughput_tokens_per_sec",
    "avg_batch_size",
)
SIDECAR = "llm_energy.json"
HISTOGRAM_BINS = 50  # the leaderboard's (scripts/build_data.py)

# Field → {energy window (None: either) → summary column}, from the column registry's
# export names. Energy per token, power and throughput come from the same window, so
# energy_per_token_joules = avg_power_watts ÷ output_throughput_tokens_per_sec exactly (as
# in ML.ENERGY's data, where all three are the steady state's).
EXPORTED = schema.export_columns()

# App fields that are a cell's keys or settings (the reference reader, `analysis.reference`,
# reads them back through these): field -> column, and field -> the backend registry's role
# of the setting (its column depends on the backend).
KEY_FIELDS = {"model_id": "model", "weight_precision": "dtype",
              "expert_parallel": "expert_parallel_size", "data_parallel": "data_parallel_size"}
ROLE_FIELDS = {"max_num_seqs": "batch_setting", "tensor_parallel": "parallel_setting"}

# The leaderboard's stability rule: ml-energy/data, mlenergy_data/records/runs.py
# (`_llm_stability_status`, `_stability_map_for_scoped_runs`), commit
# b37408f35fcdd08a9f5c3daf3dfedcd59a87a58b.
MIN_STEADY_DURATION_S = 20.0
MIN_BATCH_UTILIZATION = 0.85


def _value(value: Any) -> Any:
    """JSON-safe scalar: NaN/NA → None, numpy scalars → Python."""
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        return value
    if hasattr(value, "item"):
        value = value.item()
    return value


def _int(value: Any) -> int | None:
    value = _value(value)
    return None if value is None else int(value)


def max_num_seqs(row: pd.Series) -> int | None:
    """The cell's batch limit (the leaderboard calls it `max_num_seqs` whatever the engine):
    its backend's batch setting from the backend registry."""
    return registry.batch_limit_of(row)


def _window_column(field: str, window: str) -> str:
    by_window = EXPORTED[field]
    return by_window.get(window) or by_window[None]


def energy_per_token(row: pd.Series) -> tuple[float | None, str]:
    """(energy per output token, window): the steady state's where the cell reached one,
    else the whole cycle's."""
    steady = _value(row.get(_window_column("energy_per_token_joules", "steady_state")))
    if steady is not None:
        return float(steady), "steady_state"
    return _value(row.get(_window_column("energy_per_token_joules", "cycle"))), "cycle"


def stability(row: pd.Series) -> tuple[bool, str]:
    """(stable, reason) of one configuration by the leaderboard's per-run rule, with its
    reason strings: a steady state of at least 20 s, a positive steady-state energy per
    token, and (where both are known) an average batch of at least 85% of `max_num_seqs`."""
    duration = _value(row.get("steady_state_duration_s"))
    if duration is None or duration < MIN_STEADY_DURATION_S:
        return False, f"short_steady_state:{duration}"
    energy = _value(row.get("steady_state_energy_per_output_token_j"))
    if energy is None or energy <= 0:
        return False, f"invalid_energy_per_token:{energy}"
    limit, batch = max_num_seqs(row), _value(row.get("avg_batch_size"))
    if limit and batch is not None and batch / limit < MIN_BATCH_UTILIZATION:
        return False, f"low_batch_utilization:{batch / limit:.6f}"
    return True, ""


#: The columns `stability` and the cascade read besides the backends' settings.
STABILITY_COLUMNS = ("model", "backend", "device_name", "steady_state_duration_s",
                     "steady_state_energy_per_output_token_j", "avg_batch_size")


def leaderboard_stability(rows: pd.DataFrame, settings: list[str]) -> list[tuple[bool, str]]:
    """`stability` per row, then the leaderboard's cascade: among configurations that differ
    only in the batch limit (same model, backend, device, GPU count and other settings), once
    one is unstable at limit m, every one at a limit >= m is unstable too
    (`cascade_from_unstable_batch:m`): a larger batch cannot fill where a smaller did not."""
    # Settings other than the batch limits and the GPU count (every backend's, registry).
    skip = {*registry.batch_settings(), *registry.parallel_settings()}
    others = [c for c in settings if c not in skip]
    # The rows as records of only the columns read here (a summary has ~250 columns: a row
    # Series each, three times over, was most of the report's records at 10,000 cells).
    needed = {*STABILITY_COLUMNS, *registry.setting_names(), *others}
    records = rows[[c for c in rows.columns if c in needed]].to_dict("records")
    status = [stability(r) for r in records]
    limits = [max_num_seqs(r) for r in records]
    keys = [tuple(str(_value(v)) for v in (*(r.get(c) for c in ("model", "backend", "device_name")),
                                           registry.setting_of(r, "parallel_setting"),
                                           *(r.get(c) for c in others)))
            for r in records]
    threshold: dict[tuple[str, ...], int] = {}
    for key, limit, (stable, _) in zip(keys, limits, status):
        if limit is not None and not stable:
            threshold[key] = min(limit, threshold.get(key, limit))
    out = []
    for key, limit, (stable, why) in zip(keys, limits, status):
        m = threshold.get(key)
        if stable and limit is not None and m is not None and limit >= m:
            stable, why = False, f"cascade_from_unstable_batch:{m}"
        out.append((stable, why))
    return out



def _count(value: Any) -> int | float | None:
    """A count (a mean over cycles of integer counts): an int when whole."""
    value = _value(value)
    if value is None:
        return None
    return round(value) if float(value).is_integer() else float(value)


def energy_scope(row: pd.Series) -> str:
    """The energy domains measured, joined with "+": "gpu", "cpu", "gpu+cpu+dram", ..."""
    return "+".join(d for d in ("gpu", "cpu", "dram") if _value(row.get(f"{d}_energy_j")) is not None)


def device_label(row: pd.Series) -> str:
    """`gpu_model`: the GPU's name where the energy is measured GPU energy only (what the
    leaderboard's means); otherwise the device with the domains and whether the energy was
    measured or estimated, so that CPU or estimated energy never reads as GPU energy."""
    name = _value(row.get("device_name"))
    cuda = row.get("device") == "cuda"
    scope, source = energy_scope(row), str(_value(row.get("energy_source")) or "")
    estimated = not source or "estimate" in source
    if cuda and scope == "gpu" and not estimated:
        return str(name or "GPU")
    base = (str(name) if name else "GPU") if cuda else (f"CPU: {name}" if name else "CPU")
    return f"{base} ({'estimated' if estimated else 'measured'} {scope.upper() or 'no'} energy)"


def configuration(row: pd.Series, settings: list[str],
                  stable_why: tuple[bool, str] | None = None,
                  facts: ModelFacts | None = None) -> dict[str, Any]:
    """One app `Configuration` (fields in `APP_FIELDS` order; None where a value is unknown)
    and the namespaced `llm_energy` object."""
    energy, window = energy_per_token(row)
    n_req, out_tokens = _value(row.get("requests")), _value(row.get("output_tokens"))
    avg_out = out_tokens / n_req if out_tokens is not None and n_req else None
    cuda = row.get("device") == "cuda"
    stable, why = stable_why if stable_why is not None else stability(row)
    keys = {f: _value(row.get(c)) for f, c in KEY_FIELDS.items()}
    tp = _int(registry.setting_of(row, ROLE_FIELDS["tensor_parallel"])) or 1
    config: dict[str, Any] = {
        "model_id": keys["model_id"], "nickname": keys["model_id"],
        "gpu_model": device_label(row),
        "num_gpus": tp * (_int(keys["data_parallel"]) or 1) if cuda else 0,
        "total_params_billions": facts.total_params_billions if facts else None,
        "activated_params_billions": facts.activated_params_billions if facts else None,
        "architecture": facts.architecture if facts else None,
        "weight_precision": keys["weight_precision"],
        "max_num_seqs": max_num_seqs(row), "tensor_parallel": tp,
        "expert_parallel": _int(keys["expert_parallel"]) or 1,
        "data_parallel": _int(keys["data_parallel"]) or 1,
        "energy_per_token_joules": energy,
        "energy_per_request_joules": energy * avg_out
        if energy is not None and avg_out is not None else None,
        "avg_output_len": avg_out,
    }
    extra: dict[str, Any] = {}
    for field in EXPORTED:
        value = _value(row.get(_window_column(field, window)))
        if field in APP_FIELDS:
            config[field] = value
        else:
            extra[field] = _count(value) if field in ("total_output_tokens", "num_requests") \
                else value
    config = {f: config.get(f) for f in APP_FIELDS}
    source = _value(row.get("energy_source"))
    config["llm_energy"] = {
        "cell_id": row["cell_id"], "study": _value(row.get("study")), "backend": row["backend"],
        "settings": {c: _value(row.get(c)) for c in settings},
        # How the cell's requests were made (cells of a rate sweep differ only here).
        "workload": {c: _value(row.get(c)) for c in schema.WORKLOAD},
        "device": _value(row.get("device")), "device_name": _value(row.get("device_name")),
        "energy_window": window, "energy_source": source,
        "energy_measured": bool(source) and "estimate" not in str(source),
        "energy_scope": energy_scope(row), "is_stable": stable,
        "unstable_reason": why or None, "cycles": _int(row.get("cycles")),
        "max_num_batched_tokens": _int(registry.setting_of(row, "token_budget_setting")), **extra,
        **{f"{field}_ci95": _ci(row, _window_column(field, window))
           for field in ("energy_per_token_joules", "median_itl_ms",
                         "output_throughput_tokens_per_sec")},
    }
    return config


def _ci(row: pd.Series, metric: str) -> list[float] | None:
    low, high = _value(row.get(f"{metric}_ci95_low")), _value(row.get(f"{metric}_ci95_high"))
    return None if low is None or high is None else [low, high]


def _missing(config: dict[str, Any]) -> list[str]:
    """App fields the types require as number/string that have no value (`max_num_seqs` may
    be null in the app's types)."""
    return [f for f in APP_FIELDS if config[f] is None and f != "max_num_seqs"]


def histogram(lengths: Sequence[int], edges: np.ndarray) -> dict[str, list]:
    counts, edges = np.histogram(np.asarray(lengths, dtype=float), bins=edges)
    return {"bins": [float(e) for e in edges], "counts": [int(c) for c in counts]}


#: Fields the app shows once per model (`ModelInfo`, `ModelDetail`).
MODEL_FIELDS = ("total_params_billions", "activated_params_billions", "architecture",
                "weight_precision")


def model_fields(configs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """`MODEL_FIELDS` of one model from its configurations: the value they share, or, where
    they differ (a model measured in bfloat16 and float32), the distinct values in order of
    first appearance joined by ", " (a string, as the app's types say)."""
    out: dict[str, Any] = {}
    for field in MODEL_FIELDS:
        values = list(dict.fromkeys(c[field] for c in configs))
        out[field] = values[0] if len(values) == 1 else ", ".join(str(v) for v in values)
    return out


def model_detail(model: str, task: str, configs: list[dict[str, Any]],
                 lengths: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """The app's `ModelDetail` of one model's configurations: output-length histograms over 50
    bins shared by the model's configurations (the leaderboard's rule), the model's over all."""
    every = [n for c in configs for n in lengths[c["llm_energy"]["cell_id"]]]
    edges = np.histogram_bin_edges(np.asarray(every, dtype=float), bins=HISTOGRAM_BINS)
    out = []
    for c in configs:
        tp, ep, dp = c["tensor_parallel"], c["expert_parallel"], c["data_parallel"]
        out.append({**{f: c[f] for f in DETAIL_FIELDS},
                    "parallelization": {"tensor_parallel": tp, "expert_parallel": ep,
                                        "data_parallel": dp, "notes": ""},
                    "output_length_distribution": histogram(lengths[c["llm_energy"]["cell_id"]],
                                                            edges),
                    "llm_energy": c["llm_energy"]})
    return {"model_id": model, "task": task,
            **model_fields(configs),
            "output_length_distribution": histogram(every, edges), "configurations": out}


def task_file(task: str) -> str:
    """The task document's path under the export folder (the app's `data/tasks/<task>.json`)."""
    return f"tasks/{task}.json"


def model_file(model_id: str, task: str) -> str:
    """The model detail's path: the app replaces the first "/" of the model id with "__"."""
    return f"models/{model_id.replace('/', '__', 1)}__{task}.json"


def to_mlenergy(summary: pd.DataFrame, task: str,
                facts: Mapping[str, ModelFacts | None] | None = None,
                output_lengths: Mapping[str, Sequence[int]] | None = None) -> dict[str, Any]:
    """Relative path → JSON document: `index.json`, `tasks/<task>.json`, one
    `models/...json` per model with an exported configuration, and the sidecar. `facts`: model
    name → checkpoint facts; `output_lengths`: cell id → output tokens of its successful
    requests (all cycles)."""
    facts, output_lengths = facts or {}, output_lengths or {}
    settings = schema.present_settings(summary)
    ok = summary[summary["status"] == "ok"] if len(summary) else summary
    stable = leaderboard_stability(ok, settings) if len(ok) else []
    shown: list[dict[str, Any]] = []
    left_out = [{"cell_id": r["cell_id"], "model": r["model"], "backend": r["backend"],
                 "reason": f"failed: {_value(r.get('error'))}", "configuration": None}
                for _, r in (summary[summary["status"] != "ok"] if len(summary) else summary).iterrows()]
    for (_, row), status in zip(ok.iterrows(), stable):
        config = configuration(row, settings, status, facts.get(row["model"]))
        reasons = [] if status[0] else [status[1]]
        reasons += [f"missing:{f}" for f in _missing(config)]
        if not output_lengths.get(row["cell_id"]):
            reasons.append("missing:output_length_distribution")
        if reasons:
            left_out.append({"cell_id": row["cell_id"], "model": row["model"],
                             "backend": row["backend"], "reason": "; ".join(reasons),
                             "configuration": config})
        else:
            shown.append(config)
    models = sorted({c["model_id"] for c in shown})
    note = None if shown else ("no configuration passed the leaderboard's stability rule and "
                               "type checks: the app's task is empty; see `left_out`")
    docs: dict[str, Any] = {
        "index.json": {
            "last_updated": datetime.now(UTC).strftime("%Y-%m-%d"), "tasks": [task],
            "architectures": {"llm": [task], "mllm": [], "diffusion": []},
            "models": {m: {"nickname": m,
                           **model_fields([c for c in shown if c["model_id"] == m])}
                       for m in models}},
        task_file(task): {"task": task, "task_display_name": task if shown else
                          f"{task} (no configuration passed the stability rule)",
                          "configurations": shown},
    }
    for m in models:
        docs[model_file(m, task)] = model_detail(
            m, task, [c for c in shown if c["model_id"] == m], output_lengths)
    docs[SIDECAR] = {
        "generator": "llm-energy", "task": task, "exported": len(shown), "note": note,
        "stability_rule": f"steady state >= {MIN_STEADY_DURATION_S:g} s, energy per token > 0, "
                          f"average batch >= {MIN_BATCH_UTILIZATION:.0%} of max_num_seqs, "
                          "cascading to larger batch limits (ml-energy/data)",
        "left_out": left_out}
    return docs


def _dump(obj: Any) -> str:
    def clean(o: Any) -> Any:
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, list):
            return [clean(v) for v in o]
        if isinstance(o, float) and not math.isfinite(o):
            return None
        return o

    return json.dumps(clean(obj), indent=2, default=str, allow_nan=False) + "\n"


def write_mlenergy(summary: pd.DataFrame, out_dir: str | Path, task: str,
                   facts: Mapping[str, ModelFacts | None] | None = None,
                   output_lengths: Mapping[str, Sequence[int]] | None = None) -> list[Path]:
    """Write `to_mlenergy`'s documents under `out_dir`; returns their paths, index first."""
    out = Path(out_dir)
    paths = []
    for relative, doc in to_mlenergy(summary, task, facts, output_lengths).items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_dump(doc))
        paths.append(path)
    return paths


#: The requests.parquet columns `output_lengths` reads.
OUTPUT_LENGTH_COLUMNS = ("cell_id", "output_tokens", "success")


def output_lengths(requests: pd.DataFrame) -> dict[str, list[int]]:
    """Cell id → output tokens of its successful requests (requests.parquet rows)."""
    ok = requests[requests["success"].fillna(False).astype(bool)]
    return {str(k): [int(n) for n in g.dropna()] for k, g in ok.groupby("cell_id")["output_tokens"]}
