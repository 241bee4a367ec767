"""All cells' cycles → one summary row per cell: mean, standard deviation and a Student-t
95% confidence interval across cycles for every headline metric, plus percentile-bootstrap
intervals for the latency percentiles (requests resampled, seeded). Failed cells stay in the
summary with their error; unreadable result files are reported by path, not fatal."""

from __future__ import annotations

import json
import math
import os
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from llm_energy.results.io import RUN_COLUMNS, SCHEMA_VERSION

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
    return _multiset_percentiles(sorted_values, np.cumsum(weights, axis=1), (q,))[q]


def _multiset_percentiles(sorted_values: np.ndarray, cum: np.ndarray, qs: Iterable[float],
                          ) -> dict[float, np.ndarray]:
    """`weighted_percentiles` for several q from the row-wise cumulative integer weights
    `cum` (modified in place)."""
    total = cum[:, -1].copy()
    # The k-th element (0-based) of the expanded multiset is the first j with cum[j] > k.
    # One searchsorted for all rows (a loop over rows made 10,000-cell studies take hours):
    # rows are non-decreasing, so shifting row b by b * (max total + 1) sorts the flattened
    # array, and row b's answer is its global index minus b * width. Same result. The
    # shift is applied once, in place and in integers, for all q (a float copy per q was
    # most of the bootstrap's time).
    rows, width = cum.shape
    shift = np.arange(rows, dtype=cum.dtype) * (total.max() + 1)
    cum += shift[:, None]
    flat = cum.ravel()
    start = np.arange(rows) * width
    out = {}
    for q in qs:
        rank = (total - 1) * q / 100.0
        low = np.floor(rank)
        high = np.minimum(low + 1, total - 1)
        i_low = np.searchsorted(flat, low.astype(cum.dtype) + shift, side="right") - start
        i_high = np.searchsorted(flat, high.astype(cum.dtype) + shift, side="right") - start
        v_low, v_high = sorted_values[i_low], sorted_values[i_high]
        out[q] = v_low + (v_high - v_low) * (rank - low)
    return out


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
    owner = np.repeat(np.arange(len(groups)), [g.size for g in groups])
    return _bootstrap_flat(flat, owner, len(groups), tuple(percentiles), resamples, seed)


def _bootstrap_flat(flat: np.ndarray, owner: np.ndarray, n_groups: int, percentiles: tuple,
                    resamples: int, seed: int | list[int],
                    ) -> dict[float, tuple[float | None, float | None, float | None]]:
    """`bootstrap_percentiles` on values already flattened: `owner[i]` is the request
    (0..n_groups-1, each with at least one value) that `flat[i]` belongs to."""
    if flat.size == 0:
        return {q: (None, None, None) for q in percentiles}
    pooled = {q: float(np.percentile(flat, q)) for q in percentiles}
    if n_groups < 2:
        return {q: (pooled[q], None, None) for q in percentiles}
    order = np.argsort(flat, kind="stable")
    values, owner = flat[order], owner[order]
    rng = np.random.default_rng(seed)
    # All resamples' request indices in one draw, counted per row with one bincount (a
    # Python loop of `resamples` draws was most of the bootstrap's cost).
    picks = rng.integers(0, n_groups, (resamples, n_groups))
    picks += np.arange(resamples)[:, None] * n_groups
    counts = np.bincount(picks.ravel(), minlength=resamples * n_groups).reshape(resamples, n_groups)
    # Bounded memory: resamples × values weights per chunk; the cumulative weights are
    # computed once per chunk and shared by every percentile.
    chunk = max(1, 4_000_000 // values.size)
    replicates: dict[float, list[np.ndarray]] = {q: [] for q in percentiles}
    for first in range(0, resamples, chunk):
        cum = np.cumsum(counts[first:first + chunk][:, owner], axis=1)
        for q, reps in _multiset_percentiles(values, cum, percentiles).items():
            replicates[q].append(reps)
    out: dict[float, tuple[float | None, float | None, float | None]] = {}
    for q in percentiles:
        reps = np.concatenate(replicates[q])
        low, high = np.quantile(reps, [0.025, 0.975])
        out[q] = (pooled[q], float(low), float(high))
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


def _read_all(paths: Iterable[str | Path], read: Callable[[str | Path], pa.Table],
              ) -> tuple[list[pa.Table], list[str]]:
    """Read many small Parquet files on a few threads (Arrow releases the GIL while it
    decodes; one file at a time was most of a 10,000-cell aggregation). Order is kept;
    a file that cannot be read is reported by path, not fatal."""
    def attempt(path: str | Path) -> tuple[str | Path, pa.Table | None, str | None]:
        try:
            return path, read(path), None
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported
            return path, None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"

    tables, problems = [], []
    with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1))) as pool:
        for path, table, error in pool.map(attempt, list(paths), chunksize=64):
            if error is None:
                tables.append(table)
            else:
                problems.append(f"{path}: {error}")
    return tables, problems


def _read_runs_table(path: str | Path) -> pa.Table:
    # ParquetFile.read skips the dataset layer of pq.read_table: ~1.8x faster per small file.
    table = pq.ParquetFile(path).read(use_threads=False)
    if "cell_id" not in table.column_names or "schema_version" not in table.column_names:
        raise ValueError("not a runs.parquet of llm-energy (no cell_id/schema_version)")
    versions = {int(v) for v in table.column("schema_version").unique().to_pylist() if v is not None}
    if versions - {SCHEMA_VERSION}:
        raise ValueError(f"schema_version {sorted(versions)} (expected {SCHEMA_VERSION})")
    return table


def read_runs(paths: Iterable[str | Path]) -> tuple[pd.DataFrame, list[str]]:
    tables, problems = _read_all(paths, _read_runs_table)
    if not tables:
        return pd.DataFrame(columns=list(RUN_COLUMNS)), problems
    return _concat_to_pandas(tables), problems


def _concat_to_pandas(tables: list[pa.Table]) -> pd.DataFrame:
    """One Arrow concatenation and one `to_pandas` (a `to_pandas` per file and a `pd.concat`
    of 10,000 frames were half of a 10,000-cell aggregation). Files whose columns differ
    (a failed cell has only a few; a column all null in one file) are unified by Arrow;
    types Arrow cannot unify fall back to pandas' concatenation."""
    try:
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return pd.concat([t.to_pandas() for t in tables], ignore_index=True)


_REQUEST_FIELDS = ["cell_id", "cycle", "success", "first_token_s", "finish_s",
                   "ttft_ms", "tpot_ms", "e2e_ms", "itl_ms"]


def read_requests(paths: Iterable[str | Path]) -> tuple[pd.DataFrame, list[str]]:
    """The columns the statistics need from each cell's requests.parquet; a missing or
    unreadable file only costs that cell its bootstrap intervals and batch size."""
    tables, problems = _read_all(
        paths, lambda path: pq.ParquetFile(path).read(columns=_REQUEST_FIELDS, use_threads=False))
    if not tables:
        return pd.DataFrame(columns=_REQUEST_FIELDS), problems
    return _concat_to_pandas(tables), problems


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
    # Cycles measured with a steady-state rule carry ML.ENERGY's average batch over the steady
    # window (measure.mlenergy.avg_batch_size); older results get busy over decoding time.
    measured = runs["steady_state_rule"].notna() if "steady_state_rule" in runs \
        else pd.Series(False, index=runs.index)
    if measured.all():
        return runs
    batch: dict[tuple[str, int], float | None] = {}
    if requests is not None and len(requests):
        ok = requests[requests["success"].fillna(False).astype(bool)]
        # Row positions per (cell, cycle) on plain arrays: iterating pandas groups cost
        # ~0.1 ms each, 30,000 of them at 10,000 cells.
        first_s = pd.to_numeric(ok["first_token_s"], errors="coerce").to_numpy(dtype=float)
        finish_s = pd.to_numeric(ok["finish_s"], errors="coerce").to_numpy(dtype=float)
        for (cell, cycle), rows in ok.groupby(["cell_id", "cycle"]).indices.items():
            batch[(cell, int(cycle))] = avg_batch_size(first_s[rows].tolist(), finish_s[rows].tolist())
    legacy = [batch.get((c, int(k))) if not pd.isna(k) else None
              for c, k in zip(runs["cell_id"], runs["cycle"])]
    own = runs["avg_batch_size"] if "avg_batch_size" in runs else pd.Series(None, index=runs.index)
    runs["avg_batch_size"] = [o if m else v for o, m, v in zip(own, measured, legacy)]
    return runs


def _none_if_all_missing(column: pd.Series) -> pd.Series:
    # Row-by-row construction gave an object column of None where no cell had a value (for
    # example GPU energy on a CPU study); keep that, so the summary's schema is unchanged.
    return pd.Series([None] * len(column), index=column.index, dtype=object) \
        if column.isna().all() else column


def summarise(runs: pd.DataFrame, requests: pd.DataFrame | None = None,
              resamples: int = BOOTSTRAP_RESAMPLES) -> pd.DataFrame:
    """One row per cell, in the order cells first appear in `runs`. All cells' means,
    standard deviations and intervals come from one grouped pass (a per-cell loop of
    pandas indexing and `statistics.stdev` took ~10 ms a cell)."""
    settings = _settings_columns(runs)
    runs = _with_request_metrics(runs, requests)
    runs = runs[runs["cell_id"].notna()].reset_index(drop=True)  # groupby dropped them too
    if runs.empty:
        return pd.DataFrame()
    key = runs["cell_id"]
    firsts = runs.drop_duplicates("cell_id", keep="first").set_index("cell_id")
    cells = firsts.index
    is_ok = (runs["status"] == "ok").to_numpy()
    ok = runs[is_ok]
    rows_per_cell = key.value_counts().reindex(cells)
    ok_per_cell = ok["cell_id"].value_counts().reindex(cells, fill_value=0)
    all_ok = (ok_per_cell == rows_per_cell).to_numpy()

    def joined(frame: pd.DataFrame, column: str, sep: str) -> pd.Series:
        values = frame[["cell_id", column]].dropna()
        text = (values[column].astype(str).groupby(values["cell_id"], sort=False)
                .agg(lambda s: sep.join(sorted(set(s)))).reindex(cells))
        return pd.Series([v if isinstance(v, str) and v else None for v in text],
                         index=cells, dtype=object)

    warnings: dict[str, set] = {c: set() for c in cells}
    for cell, ws in zip(key, runs["warnings"] if "warnings" in runs else [None] * len(runs)):
        if ws is not None:
            warnings[cell].update(ws)

    def ok_mean(column: str) -> pd.Series:
        if column not in ok:
            return pd.Series([None] * len(cells), index=cells, dtype=object)
        means = pd.to_numeric(ok[column], errors="coerce").groupby(ok["cell_id"], sort=False).mean()
        return _none_if_all_missing(means.reindex(cells))

    out: dict[str, object] = {
        "cell_id": cells, "model": firsts["model"], "backend": firsts["backend"],
        **{c: firsts[c] for c in settings},
        "device": firsts["device"] if "device" in firsts else None,
        "device_name": firsts["device_name"] if "device_name" in firsts else None,
        "status": np.where(all_ok, "ok", "failed"),
        "error": joined(runs, "error", "; "),
        "cycles": ok_per_cell.astype(int),
        "ci_note": np.where(all_ok & (ok_per_cell < 2).to_numpy(), NO_INTERVAL, None),
        "energy_source": joined(ok, "energy_source", "+"),
        "warnings": [sorted(warnings[c]) for c in cells],
        "output_tokens": ok_mean("output_tokens"), "requests": ok_mean("requests"),
        "flops_per_token": ok_mean("flops_per_token"),
    }
    for metric in HEADLINE_METRICS:
        if metric not in ok:
            for suffix in ("", "_std", "_ci95_low", "_ci95_high"):
                out[f"{metric}{suffix}"] = None
            continue
        values = pd.to_numeric(ok[metric], errors="coerce").groupby(ok["cell_id"], sort=False)
        n = values.count().reindex(cells, fill_value=0).to_numpy()
        mean = values.mean().reindex(cells).to_numpy(dtype=float)
        std = values.std(ddof=1).reindex(cells).to_numpy(dtype=float)
        std = np.where(n >= 2, std, np.nan)
        half = _t95_array(n - 1) * std / np.sqrt(np.maximum(n, 1))
        for suffix, column in (("", mean), ("_std", std), ("_ci95_low", mean - half),
                               ("_ci95_high", mean + half)):
            out[f"{metric}{suffix}"] = _none_if_all_missing(pd.Series(column, index=cells))
    summary = pd.DataFrame({k: (v.to_numpy() if isinstance(v, pd.Series) else v)
                            for k, v in out.items()})
    boot = _bootstrap_columns(summary["cell_id"].tolist(), ok, requests, resamples)
    return pd.concat([summary, boot], axis=1)


def _t95_array(dof: np.ndarray) -> np.ndarray:
    table = np.asarray([np.nan, *_T95])  # index 0: no degrees of freedom, no interval
    return np.where(dof > len(_T95), 1.960, table[np.clip(dof, 0, len(_T95))])


def _bootstrap_columns(cells: list[str], ok_runs: pd.DataFrame, requests: pd.DataFrame | None,
                       resamples: int) -> pd.DataFrame:
    """`<latency>_ms_p<q>_pooled` (over all successful requests of each cell's successful
    cycles) and its `_boot95_low` / `_boot95_high` bounds, one row per cell."""
    columns = [f"{name}_ms_p{q}_{part}" for name in LATENCIES for q in PERCENTILES
               for part in ("pooled", "boot95_low", "boot95_high")]
    rows = {c: [None] * len(cells) for c in columns}
    if requests is not None and len(requests):
        ok_cycles = set(zip(ok_runs["cell_id"], pd.to_numeric(ok_runs["cycle"], errors="coerce")))
        keep = requests["success"].fillna(False).astype(bool).to_numpy() & np.fromiter(
            ((c, k) in ok_cycles for c, k in zip(requests["cell_id"],
                                                 pd.to_numeric(requests["cycle"], errors="coerce"))),
            dtype=bool, count=len(requests))
        kept = requests[keep]
        scalars = {name: pd.to_numeric(kept[f"{name}_ms"], errors="coerce").to_numpy(dtype=float)
                   for name in LATENCIES if name != "itl"}
        itl = kept["itl_ms"].to_numpy()
        position = {c: i for i, c in enumerate(cells)}
        for cell, idx in kept.groupby("cell_id", sort=False).indices.items():
            if cell not in position:
                continue
            seed = _cell_seed(cell)
            for name in LATENCIES:
                if name == "itl":
                    groups = [np.asarray(v, dtype=float) for v in itl[idx] if v is not None]
                    groups = [g[~np.isnan(g)] for g in groups]
                    groups = [g for g in groups if g.size]
                    flat = np.concatenate(groups) if groups else np.empty(0)
                    owner = np.repeat(np.arange(len(groups)), [g.size for g in groups])
                    n_groups = len(groups)
                else:
                    flat = scalars[name][idx]
                    flat = flat[~np.isnan(flat)]
                    owner, n_groups = np.arange(flat.size), flat.size
                stats = _bootstrap_flat(flat, owner, n_groups, PERCENTILES, resamples, seed)
                i = position[cell]
                for q, (pooled, low, high) in stats.items():
                    rows[f"{name}_ms_p{q}_pooled"][i] = pooled
                    rows[f"{name}_ms_p{q}_boot95_low"][i] = low
                    rows[f"{name}_ms_p{q}_boot95_high"][i] = high
    return pd.DataFrame(rows, columns=columns)


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
    from llm_energy.study.config import CarbonConfig

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
