"""All cells' cycles → one summary row per cell: mean, standard deviation and a Student-t
95% confidence interval across cycles for every headline metric, plus percentile-bootstrap
intervals for the latency percentiles (requests resampled, seeded). Failed cells stay in the
summary with their error; unreadable result files are reported by path, not fatal."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from llm_energy.results import RUN_COLUMNS, SCHEMA_VERSION

LATENCIES = ("ttft", "itl", "tpot", "e2e")
PERCENTILES = (50, 90, 95, 99)

HEADLINE_METRICS = (
    "energy_per_output_token_j", "energy_per_request_j", "output_tokens_per_s", "avg_power_w",
    "total_energy_j", "net_energy_j", "gpu_energy_j", "cpu_energy_j", "dram_energy_j",
    "idle_power_w", "duration_s", "steady_state_energy_j", "steady_state_duration_s",
    "steady_state_energy_per_output_token_j", "avg_batch_size",
    *(f"{name}_ms_p{q}" for name in LATENCIES for q in PERCENTILES),
    "achieved_tflops", "mfu", "peak_memory_mb",
)

# Percentile bootstrap over requests: resamples per cell, and the seed (mixed with the cell id,
# so cells do not share resampling patterns, yet every rerun gives the same interval).
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0

NO_INTERVAL = "fewer than 2 cycles: no confidence interval"

# Two-sided 95% Student-t critical values by degrees of freedom (beyond 30: normal).
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t95(dof: int) -> float:
    return _T95[dof - 1] if dof <= len(_T95) else 1.960


def mean_ci(values: Iterable[float]) -> tuple[float | None, float | None, float | None, float | None]:
    """(mean, std, ci_low, ci_high); the interval is None with fewer than two values."""
    clean = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not clean:
        return None, None, None, None
    mean = statistics.fmean(clean)
    if len(clean) < 2:
        return mean, None, None, None
    std = statistics.stdev(clean)
    half = t95(len(clean) - 1) * std / math.sqrt(len(clean))
    return mean, std, mean - half, mean + half


def weighted_percentiles(sorted_values: np.ndarray, weights: np.ndarray, q: float) -> np.ndarray:
    """Linear-interpolated percentile (numpy's default) of the multiset in which
    `sorted_values[j]` appears `weights[b, j]` times, for each row b: the percentile of a
    bootstrap resample without materialising it."""
    cum = np.cumsum(weights, axis=1)
    total = cum[:, -1]
    rank = (total - 1) * q / 100.0
    low = np.floor(rank)
    high = np.minimum(low + 1, total - 1)
    # The k-th element (0-based) of the expanded multiset is the first j with cum[j] > k.
    # One searchsorted for all rows (a loop over rows made 10,000-cell studies take hours):
    # rows are non-decreasing, so shifting row b by b * (max total + 1) sorts the flattened
    # array, and row b's answer is its global index minus b * width. Same result.
    rows, width = cum.shape
    shift = np.arange(rows) * (float(total.max()) + 1)
    flat = (cum + shift[:, None]).ravel()
    start = np.arange(rows) * width
    i_low = np.searchsorted(flat, low + shift, side="right") - start
    i_high = np.searchsorted(flat, high + shift, side="right") - start
    v_low, v_high = sorted_values[i_low], sorted_values[i_high]
    return v_low + (v_high - v_low) * (rank - low)


def bootstrap_percentiles(per_request: list[list[float]], percentiles: Iterable[float],
                          resamples: int = BOOTSTRAP_RESAMPLES, seed: int | list[int] = BOOTSTRAP_SEED,
                          ) -> dict[float, tuple[float | None, float | None, float | None]]:
    """Per percentile q: (pooled value, 2.5% and 97.5% bootstrap quantiles). Requests are
    the resampling unit (a request's inter-token gaps stay together: they are correlated).
    Bounds are None with fewer than 2 requests that have a value."""
    groups = [np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
              for values in per_request]
    groups = [g for g in groups if g.size]
    flat = np.concatenate(groups) if groups else np.empty(0)
    out: dict[float, tuple[float | None, float | None, float | None]] = {}
    if flat.size == 0:
        return {q: (None, None, None) for q in percentiles}
    owner = np.repeat(np.arange(len(groups)), [g.size for g in groups])
    order = np.argsort(flat, kind="stable")
    values, owner = flat[order], owner[order]
    pooled = {q: float(np.percentile(flat, q)) for q in percentiles}
    if len(groups) < 2:
        return {q: (pooled[q], None, None) for q in percentiles}
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, len(groups), len(groups)), minlength=len(groups))
                       for _ in range(resamples)])
    # Bounded memory: resamples × values weights per chunk.
    chunk = max(1, 4_000_000 // values.size)
    replicates: dict[float, list[np.ndarray]] = {q: [] for q in percentiles}
    for first in range(0, resamples, chunk):
        weights = counts[first:first + chunk][:, owner]
        for q in percentiles:
            replicates[q].append(weighted_percentiles(values, weights, q))
    for q in percentiles:
        reps = np.concatenate(replicates[q])
        out[q] = (pooled[q], float(np.quantile(reps, 0.025)), float(np.quantile(reps, 0.975)))
    return out


def avg_batch_size(first_token_s: Iterable[float], finish_s: Iterable[float]) -> float | None:
    """Mean number of requests decoding together, over the time at least one is decoding
    (busy request-seconds / length of the union of their [first token, finish] intervals).
    A static batch of n requests that finish together gives n; ML.ENERGY reports the
    average of vLLM's running-requests gauge in the steady state, the same idea."""
    spans = sorted((a, b) for a, b in zip(first_token_s, finish_s)
                   if a is not None and b is not None and not (math.isnan(a) or math.isnan(b)))
    if not spans:
        return None
    busy = sum(b - a for a, b in spans)
    union, cur_a, cur_b = 0.0, *spans[0]
    for a, b in spans[1:]:
        if a > cur_b:
            union += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    union += cur_b - cur_a
    return busy / union if union > 0 else None


@dataclass
class Aggregation:
    summary: pd.DataFrame
    runs: pd.DataFrame
    problems: list[str] = field(default_factory=list)


def read_runs(paths: Iterable[str | Path]) -> tuple[pd.DataFrame, list[str]]:
    frames, problems = [], []
    for path in paths:
        try:
            table = pq.read_table(path)
            if "cell_id" not in table.column_names or "schema_version" not in table.column_names:
                raise ValueError("not a runs.parquet of llm-energy (no cell_id/schema_version)")
            frame = table.to_pandas()
            versions = set(frame["schema_version"].dropna().astype(int))
            if versions - {SCHEMA_VERSION}:
                raise ValueError(f"schema_version {sorted(versions)} (expected {SCHEMA_VERSION})")
            frames.append(frame)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, not fatal
            problems.append(f"{path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    if not frames:
        return pd.DataFrame(columns=list(RUN_COLUMNS)), problems
    return pd.concat(frames, ignore_index=True), problems


_REQUEST_FIELDS = ["cell_id", "cycle", "success", "first_token_s", "finish_s",
                   "ttft_ms", "tpot_ms", "e2e_ms", "itl_ms"]


def read_requests(paths: Iterable[str | Path]) -> tuple[pd.DataFrame, list[str]]:
    """The columns the statistics need from each cell's requests.parquet; a missing or
    unreadable file only costs that cell its bootstrap intervals and batch size."""
    frames, problems = [], []
    for path in paths:
        try:
            frames.append(pq.read_table(path, columns=_REQUEST_FIELDS).to_pandas())
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    if not frames:
        return pd.DataFrame(columns=_REQUEST_FIELDS), problems
    return pd.concat(frames, ignore_index=True), problems


def _settings_columns(runs: pd.DataFrame) -> list[str]:
    return [c for c in runs.columns if c not in RUN_COLUMNS]


def _cell_seed(cell_id: str) -> list[int]:
    try:
        return [BOOTSTRAP_SEED, int(str(cell_id)[:12], 16)]
    except ValueError:
        return [BOOTSTRAP_SEED, sum(str(cell_id).encode())]


def _with_request_metrics(runs: pd.DataFrame, requests: pd.DataFrame | None) -> pd.DataFrame:
    """Per-cycle metrics derived here rather than in the protocol: steady-state energy per
    output token (ML.ENERGY's headline) and the average batch size from request times."""
    runs = runs.copy()
    if "steady_state_energy_j" in runs and "steady_state_output_tokens" in runs:
        tokens = runs["steady_state_output_tokens"].astype(float)
        runs["steady_state_energy_per_output_token_j"] = \
            runs["steady_state_energy_j"].astype(float) / tokens.where(tokens > 0)
    batch: dict[tuple[str, int], float | None] = {}
    if requests is not None and len(requests):
        ok = requests[requests["success"].fillna(False).astype(bool)]
        for (cell, cycle), group in ok.groupby(["cell_id", "cycle"]):
            batch[(cell, int(cycle))] = avg_batch_size(group["first_token_s"], group["finish_s"])
    runs["avg_batch_size"] = [batch.get((c, int(k))) if not pd.isna(k) else None
                              for c, k in zip(runs["cell_id"], runs["cycle"])]
    return runs


def summarise(runs: pd.DataFrame, requests: pd.DataFrame | None = None,
              resamples: int = BOOTSTRAP_RESAMPLES) -> pd.DataFrame:
    settings = _settings_columns(runs)
    runs = _with_request_metrics(runs, requests)
    by_cell = dict(tuple(requests.groupby("cell_id", sort=False))) if requests is not None and len(requests) else {}
    rows = []
    for cell_id, group in runs.groupby("cell_id", sort=False):
        first = group.iloc[0]
        ok = group[group["status"] == "ok"]
        row = {"cell_id": cell_id, "model": first["model"], "backend": first["backend"],
               **{c: first[c] for c in settings}, "device": first.get("device"),
               "device_name": first.get("device_name"),
               "status": "ok" if len(ok) == len(group) else "failed",
               "error": "; ".join(sorted({str(e) for e in group["error"].dropna()})) or None,
               "cycles": int(len(ok)),
               "ci_note": NO_INTERVAL if len(ok) == len(group) and len(ok) < 2 else None,
               "energy_source": "+".join(sorted({str(s) for s in ok["energy_source"].dropna()})) or None,
               "warnings": sorted({w for ws in group["warnings"] if ws is not None for w in ws}),
               "output_tokens": ok["output_tokens"].mean() if len(ok) else None,
               "requests": ok["requests"].mean() if len(ok) else None,
               "flops_per_token": ok["flops_per_token"].mean() if len(ok) else None}
        for metric in HEADLINE_METRICS:
            mean, std, low, high = mean_ci(ok[metric].tolist() if metric in ok else [])
            row[metric] = mean
            row[f"{metric}_std"] = std
            row[f"{metric}_ci95_low"] = low
            row[f"{metric}_ci95_high"] = high
        row.update(_bootstrap_row(by_cell.get(cell_id), set(ok["cycle"].dropna().astype(int)),
                                  _cell_seed(cell_id), resamples))
        rows.append(row)
    return pd.DataFrame(rows)


def _bootstrap_row(requests: pd.DataFrame | None, ok_cycles: set[int], seed: list[int],
                   resamples: int) -> dict[str, float | None]:
    """`<latency>_ms_p<q>_pooled` (over all requests of the successful cycles) and its
    `_boot95_low` / `_boot95_high` bounds."""
    row: dict[str, float | None] = {}
    if requests is not None:
        requests = requests[requests["cycle"].isin(ok_cycles)
                            & requests["success"].fillna(False).astype(bool)]
    for name in LATENCIES:
        if requests is None or requests.empty:
            per_request: list[list[float]] = []
        elif name == "itl":
            per_request = [list(v) if v is not None else [] for v in requests["itl_ms"]]
        else:
            per_request = [[v] for v in requests[f"{name}_ms"]]
        stats = bootstrap_percentiles(per_request, PERCENTILES, resamples, seed)
        for q, (pooled, low, high) in stats.items():
            row[f"{name}_ms_p{q}_pooled"] = pooled
            row[f"{name}_ms_p{q}_boot95_low"] = low
            row[f"{name}_ms_p{q}_boot95_high"] = high
    return row


def requests_paths_for(runs_paths: Iterable[str | Path]) -> list[Path]:
    """Each cell's requests.parquet sits beside its runs.parquet."""
    return [Path(p).with_name("requests.parquet") for p in runs_paths]


def aggregate(paths: Iterable[str | Path], request_paths: Iterable[str | Path] | None = None,
              resamples: int = BOOTSTRAP_RESAMPLES) -> Aggregation:
    paths = list(paths)
    runs, problems = read_runs(paths)
    if request_paths is None:
        request_paths = [p for p in requests_paths_for(paths) if p.exists()]
    requests, request_problems = read_requests(request_paths)
    return Aggregation(summarise(runs, requests, resamples), runs, problems + request_problems)


PROBLEMS_METADATA_KEY = b"llm_energy.problems"


def write_summary(agg: Aggregation, parquet_path: str | Path, csv_path: str | Path) -> None:
    # Unreadable result files travel with the summary (Parquet key-value metadata), so the
    # report can list them without another output file.
    table = pa.Table.from_pandas(agg.summary, preserve_index=False)
    metadata = {**(table.schema.metadata or {}),
                PROBLEMS_METADATA_KEY: json.dumps(agg.problems).encode()}
    pq.write_table(table.replace_schema_metadata(metadata), parquet_path)
    flat = agg.summary.copy()
    flat["warnings"] = flat["warnings"].map(lambda ws: " | ".join(ws) if ws is not None else "")
    flat.to_csv(csv_path, index=False)


def read_problems(summary_path: str | Path) -> list[str]:
    """The unreadable result files recorded in a summary by `write_summary` ("path: error")."""
    metadata = pq.read_schema(summary_path).metadata or {}
    return list(json.loads(metadata.get(PROBLEMS_METADATA_KEY, b"[]")))


# ---------------------------------------------------------------- carbon and cost

J_PER_KWH = 3.6e6


def add_carbon_and_cost(summary: pd.DataFrame, carbon: dict | None = None) -> pd.DataFrame:
    """Emissions and electricity cost per 1,000 output tokens from the measured (gross)
    energy per token: kWh × PUE × grid intensity (g CO2e) or × price. Linear, so the 95%
    interval bounds scale the same way. The factors used are kept as columns; estimated
    energy gives estimated emissions (`energy_source` says which)."""
    from llm_energy.config import CarbonConfig

    factors = CarbonConfig(**(carbon or {}))
    out = summary.copy()
    for suffix in ("", "_ci95_low", "_ci95_high"):
        column = f"energy_per_output_token_j{suffix}"
        if column not in out:
            continue
        kwh = pd.to_numeric(out[column], errors="coerce") * 1000.0 / J_PER_KWH
        out[f"energy_kwh_per_1k_tokens{suffix}"] = kwh
        out[f"co2e_g_per_1k_tokens{suffix}"] = kwh * factors.pue * factors.grid_intensity_g_per_kwh
        out[f"cost_per_1k_tokens{suffix}"] = kwh * factors.pue * factors.price_per_kwh
    out["grid_intensity_g_per_kwh"] = factors.grid_intensity_g_per_kwh
    out["pue"] = factors.pue
    out["price_per_kwh"] = factors.price_per_kwh
    out["currency"] = factors.currency
    return out
