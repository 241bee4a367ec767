"""The summary in the ML.ENERGY leaderboard's data format (`results/<study>/mlenergy/`).

The leaderboard's build script (ml-energy/leaderboard, scripts/build_data.py) writes an
`index.json` (tasks, models) and one JSON per task with a list of `configurations`; this
module writes the same two files, with the same field names and meanings where this pipeline
measures the same thing:

- `energy_per_token_joules`: steady-state energy per output token (ML.ENERGY's headline:
  energy in the window where the batch is full / output tokens in it); where a cell never
  reached a steady state, the whole-cycle figure, and `energy_window` says which.
- `avg_power_watts`, `output_throughput_tokens_per_sec`: energy ÷ time and tokens ÷ time of the
  same window (ratios of sums over the cycles, as in the summary), so energy per token =
  power ÷ throughput exactly, as in ML.ENERGY's data.
- `energy_per_request_joules`: `energy_per_token_joules` × mean output length (their rule).
- `total_energy_joules`: the steady-state window's energy (their `steady_state_energy`).
- `median_itl_ms`, `p90/p95/p99_itl_ms`: inter-token latency percentiles (mean over cycles).
- `avg_batch_size`: time average of running requests over the steady window (their mean of
  vLLM's running-requests gauge; see `measure.mlenergy.avg_batch_size`).
- `is_stable`: their leaderboard's rule (`leaderboard_stability`).

Differences that matter when comparing with the leaderboard: their energy is GPU-only, this
pipeline's is every domain measured (`energy_scope` lists them; `energy_source` says measured
or estimate), and their ITL percentiles come from vLLM's histograms in the steady state.
Each configuration also carries an `llm_energy` object with the cell id, settings, sources
and confidence intervals."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from llm_energy.results import schema

# The leaderboard's configuration fields, in its order, then the ones this pipeline adds
# from the ML.ENERGY dataset schema.
MLENERGY_FIELDS = (
    "model_id", "nickname", "gpu_model", "num_gpus", "total_params_billions",
    "activated_params_billions", "max_num_seqs", "max_num_batched_tokens",
    "energy_per_token_joules", "energy_per_request_joules", "median_itl_ms",
    "output_throughput_tokens_per_sec", "p90_itl_ms", "p95_itl_ms", "p99_itl_ms",
    "avg_batch_size", "avg_power_watts", "total_energy_joules", "total_output_tokens",
    "num_requests", "duration_seconds", "steady_state_duration_seconds", "is_stable",
)

# Field → {energy window (None: either) → summary column}, from the column registry's
# export names. Energy per token, power and throughput come from the same window, so
# energy_per_token_joules = avg_power_watts ÷ output_throughput_tokens_per_sec exactly (as
# in ML.ENERGY's data, where all three are the steady state's).
EXPORTED = schema.export_columns()

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
    """The cell's batch limit: vLLM's `max_num_seqs`, or the static `batch_size`."""
    for axis in ("max_num_seqs", "batch_size"):
        if _value(row.get(axis)) is not None:
            return _int(row.get(axis))
    return None


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


def leaderboard_stability(rows: pd.DataFrame, settings: list[str]) -> list[tuple[bool, str]]:
    """`stability` per row, then the leaderboard's cascade: among configurations that differ
    only in the batch limit (same model, backend, device, GPU count and other settings), once
    one is unstable at limit m, every one at a limit >= m is unstable too
    (`cascade_from_unstable_batch:m`): a larger batch cannot fill where a smaller did not."""
    status = [stability(r) for _, r in rows.iterrows()]
    limits = [max_num_seqs(r) for _, r in rows.iterrows()]
    others = [c for c in settings if c not in ("max_num_seqs", "batch_size")]
    keys = [tuple(str(_value(r.get(c))) for c in ("model", "backend", "device_name",
                                                  "tensor_parallel_size", *others))
            for _, r in rows.iterrows()]
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


def configuration(row: pd.Series, settings: list[str],
                  stable_why: tuple[bool, str] | None = None) -> dict[str, Any]:
    energy, window = energy_per_token(row)
    out_len = _value(row.get("output_tokens"))
    n_req = _value(row.get("requests"))
    cuda = row.get("device") == "cuda"
    stable, why = stable_why if stable_why is not None else stability(row)
    config: dict[str, Any] = {
        "model_id": row["model"], "nickname": row["model"],
        "gpu_model": _value(row.get("device_name")) if cuda else None,
        "num_gpus": (_int(row.get("tensor_parallel_size")) or 1) if cuda else 0,
        "total_params_billions": None, "activated_params_billions": None,
        "max_num_seqs": max_num_seqs(row),
        "max_num_batched_tokens": _int(row.get("max_num_batched_tokens")),
        "energy_per_token_joules": energy,
        "energy_per_request_joules": energy * out_len / n_req
        if energy is not None and out_len is not None and n_req else None,
    }
    for field in EXPORTED:
        config[field] = _value(row.get(_window_column(field, window)))
    config["is_stable"] = stable
    config = {f: config.get(f) for f in MLENERGY_FIELDS}
    source = _value(row.get("energy_source"))
    config["llm_energy"] = {
        "cell_id": row["cell_id"], "backend": row["backend"],
        "settings": {c: _value(row.get(c)) for c in settings},
        "device": _value(row.get("device")), "device_name": _value(row.get("device_name")),
        "energy_window": window, "energy_source": source,
        "energy_measured": bool(source) and "estimate" not in str(source),
        "energy_scope": "+".join(d for d in ("gpu", "cpu", "dram")
                                 if _value(row.get(f"{d}_energy_j")) is not None),
        "unstable_reason": why or None, "cycles": _int(row.get("cycles")),
        **{f"{field}_ci95": _ci(row, _window_column(field, window))
           for field in ("energy_per_token_joules", "median_itl_ms",
                         "output_throughput_tokens_per_sec")},
    }
    return config


def _ci(row: pd.Series, metric: str) -> list[float] | None:
    low, high = _value(row.get(f"{metric}_ci95_low")), _value(row.get(f"{metric}_ci95_high"))
    return None if low is None or high is None else [low, high]


def _settings(summary: pd.DataFrame) -> list[str]:
    return schema.present_settings(summary)


def to_mlenergy(summary: pd.DataFrame, task: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(index, task document). Failed cells are left out of `configurations` and listed
    under `excluded` with their error."""
    settings = _settings(summary)
    ok = summary[summary["status"] == "ok"] if len(summary) else summary
    stable = leaderboard_stability(ok, settings) if len(ok) else []
    configs = [configuration(r, settings, s) for (_, r), s in zip(ok.iterrows(), stable)]
    failed = summary[summary["status"] != "ok"] if len(summary) else summary
    models = {}
    for model in sorted(set(summary["model"])) if len(summary) else []:
        rows = summary[summary["model"] == model]
        dtypes = sorted({str(d) for d in rows.get("dtype", pd.Series(dtype=str)).dropna()})
        models[model] = {"nickname": model, "total_params_billions": None,
                         "activated_params_billions": None, "is_moe": None,
                         "weight_precision": "/".join(dtypes) or None}
    index = {"last_updated": datetime.now(UTC).strftime("%Y-%m-%d"), "tasks": [task],
             "models": models, "generator": "llm-energy"}
    document = {"task": task, "task_display_name": task, "configurations": configs,
                "excluded": [{"cell_id": r["cell_id"], "model": r["model"], "backend": r["backend"],
                              "reason": _value(r.get("error"))} for _, r in failed.iterrows()]}
    return index, document


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


def task_file(task: str) -> str:
    """The task document's file name (a study named "index" must not overwrite index.json)."""
    return f"{task}.json" if task != "index" else "index_task.json"


def write_mlenergy(summary: pd.DataFrame, out_dir: str | Path, task: str) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index, document = to_mlenergy(summary, task)
    paths = [out / "index.json", out / task_file(task)]
    paths[0].write_text(_dump(index))
    paths[1].write_text(_dump(document))
    return paths
