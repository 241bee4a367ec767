"""All cells' cycles → one summary row per cell, every per-cycle metric aggregated as the
column registry (`results.schema`) declares: headline values as ratios of sums over the
successful cycles (energy ÷ tokens, tokens ÷ time, energy ÷ time, so J/token = W ÷ tokens/s
exactly), sign-respecting 95% intervals across cycles (`statistics.ratio_of_sums`), and
percentile-bootstrap intervals for the latency percentiles (requests resampled, seeded).
Failed cells stay in the summary with their error; unreadable result files are reported by
path, not fatal. Method: docs/methodology.md."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from llm_energy.analysis.slo import CYCLE_COLUMNS as SLO_CYCLE_COLUMNS
from llm_energy.analysis.slo import slo_settings, with_slo_columns
from llm_energy.analysis.statistics import (  # noqa: F401 - re-exported
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    NO_INTERVAL,
    _bootstrap_flat,
    bootstrap_percentiles,
    mean_ci,
    one_blas_thread,
    ratio_of_sums,
    weighted_percentiles,
)
from llm_energy.analysis.summary_io import (  # noqa: F401 - re-exported
    PROBLEMS_METADATA_KEY,
    read_problems,
    read_requests,
    read_runs,
    requests_paths_for,
    write_summary,
)
from llm_energy.results import schema
from llm_energy.results.intervals import interval_met, relative_half_width
from llm_energy.results.schema import LATENCIES, PERCENTILES

#: Metrics with `_std`, `_ci95_low` and `_ci95_high` columns in every summary (optional
#: columns, such as server metrics, only where some cell has them).
HEADLINE_METRICS = tuple(c.name for c in schema.aggregated() if c.interval and not c.optional)


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


def _cell_seed(cell_id: str) -> list[int]:
    try:
        return [BOOTSTRAP_SEED, int(str(cell_id)[:12], 16)]
    except ValueError:
        return [BOOTSTRAP_SEED, sum(str(cell_id).encode())]


def _with_request_metrics(runs: pd.DataFrame, requests: pd.DataFrame | None) -> pd.DataFrame:
    """The per-cycle average batch size of results from before cycles carried their own
    (`steady_state_rule` null), from request times (the registry's other derived metrics are
    ratios of runs columns, aggregated directly)."""
    runs = runs.copy()
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


def _metric_columns(ok: pd.DataFrame, cells: pd.Index, available: set[str]) -> dict[str, pd.Series]:
    """Every aggregated per-cycle metric of the registry, over the successful cycles: its
    value and, where declared, `_std`, `_ci95_low`, `_ci95_high`. Optional columns (server
    metrics) only when some cell has them."""
    out: dict[str, pd.Series] = {}
    key = ok["cell_id"]
    codes = cells.get_indexer(key)  # once, not per metric
    missing = pd.Series([None] * len(cells), index=cells, dtype=object)
    for col in schema.aggregated():
        agg = col.agg
        needs = {col.name} if agg.how != "ratio" else {agg.num, agg.den}
        if agg.how == "weighted":
            needs.add(agg.den)
        if col.optional and not needs <= available:
            continue
        suffixes = ("", *schema.INTERVAL_SUFFIXES) if col.interval else ("",)
        if not needs <= set(ok.columns):
            out.update({col.name + s: missing for s in suffixes})
            continue
        if agg.how in ("max", "sum", "first"):
            values = pd.to_numeric(ok[col.name], errors="coerce").groupby(key, sort=False)
            result = {"max": values.max, "sum": lambda v=values: v.sum(min_count=1),
                      "first": values.first}[agg.how]()
            out[col.name] = _none_if_all_missing(result.reindex(cells))
            continue
        if agg.how == "mean":
            num, den = ok[col.name], pd.Series(1.0, index=ok.index)
        elif agg.how == "ratio":
            num, den = ok[agg.num], ok[agg.den]
        else:  # weighted by `den`
            weight = pd.to_numeric(ok[agg.den], errors="coerce")
            num, den = pd.to_numeric(ok[col.name], errors="coerce") * weight, weight
        stats = ratio_of_sums(codes, num, den, cells, col.positive)
        for suffix, part in zip(suffixes, ("value", "std", "low", "high")):
            out[col.name + suffix] = _none_if_all_missing(pd.Series(stats[part], index=cells))
    return out


GATE_METRIC = "energy_per_output_token_j"


def _gate_columns(out: dict[str, object], cells: pd.Index) -> dict[str, pd.Series]:
    """The validity gate per cell from the summary's own J/token interval:
    `ci_rel_achieved` (`intervals.relative_half_width`) and `gate_met`
    (`intervals.interval_met` against the cycles' `target_ci_rel`): the rule the protocol
    stopped on (`measure.gate.more_cycles_needed`)."""
    def values(name: str) -> list:
        column = out.get(name)
        if not isinstance(column, pd.Series):
            return [None] * len(cells)
        return [None if pd.isna(v) else float(v) for v in column]

    achieved = [relative_half_width(v, lo, hi) for v, lo, hi in zip(
        values(GATE_METRIC), values(f"{GATE_METRIC}_ci95_low"), values(f"{GATE_METRIC}_ci95_high"))]
    met = [interval_met(a, t) for a, t in zip(achieved, values("target_ci_rel"))]
    return {"ci_rel_achieved": pd.Series(achieved, index=cells, dtype=object),
            "gate_met": pd.Series(met, index=cells, dtype=object)}


def summarise(runs: pd.DataFrame, requests: pd.DataFrame | None = None,
              resamples: int = BOOTSTRAP_RESAMPLES, slo: Mapping | None = None,
              study: str | None = None) -> pd.DataFrame:
    """One row per cell, in the order cells first appear in `runs`: keys, settings (the
    registry's setting columns present in `runs`), status, then each per-cycle metric as
    the registry aggregates it. All cells in one grouped pass per metric (a per-cell loop
    of pandas indexing took ~10 ms a cell). With `slo` (the study's `slo:` section as a
    dict; empty or None: none), also SLO attainment, goodput and energy per SLO-meeting
    request from `requests` (`analysis.slo`), and the thresholds used. `study`: the study's
    name, a column of every row (None: null)."""
    settings = [c for c in runs.columns if schema.is_setting(c)]
    available = set(runs.columns)
    runs = _with_request_metrics(runs, requests)
    if slo:
        runs = with_slo_columns(runs, requests, slo)
        available |= set(SLO_CYCLE_COLUMNS)
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
        if column not in frame:
            return pd.Series([None] * len(cells), index=cells, dtype=object)
        values = frame[["cell_id", column]].dropna()
        text = (values[column].astype(str).groupby(values["cell_id"], sort=False)
                .agg(lambda s: sep.join(sorted(set(s)))).reindex(cells))
        return pd.Series([v if isinstance(v, str) and v else None for v in text],
                         index=cells, dtype=object)

    def union(column: str) -> list[list[str]]:
        found: dict[str, set] = {c: set() for c in cells}
        for cell, values in zip(key, runs[column] if column in runs else [None] * len(runs)):
            if values is not None:
                found[cell].update(values)
        return [sorted(found[c]) for c in cells]

    out: dict[str, object] = {"cell_id": cells, "study": [study] * len(cells),
                              "model": firsts["model"],
                              "backend": firsts["backend"], **{c: firsts[c] for c in settings}}
    for col in schema.RUNS.values():
        if col.kind is schema.Kind.METRIC or col.name in out \
                or (col.optional and col.name not in runs):
            continue
        if col.name == "status":
            out["status"] = np.where(all_ok, "ok", "failed")
        elif col.agg is None:
            continue
        elif col.agg.how == "first":
            out[col.name] = firsts.get(col.name)
        elif col.agg.how == "join":
            # Errors of every row; anything else (energy sources) of the cycles that count.
            out[col.name] = joined(runs if col.name == "error" else ok, col.name, col.agg.sep)
        elif col.agg.how == "union":
            out[col.name] = union(col.name)
        elif col.agg.how == "all" and col.name in ok:
            values = ok[["cell_id", col.name]].dropna()
            every = values[col.name].astype(bool).groupby(values["cell_id"], sort=False).all()
            out[col.name] = pd.Series([None if pd.isna(v) else bool(v)
                                       for v in every.reindex(cells)], index=cells, dtype=object)
        if col.name == "error":
            out["cycles"] = ok_per_cell.astype(int)
            out["ci_note"] = np.where(all_ok & (ok_per_cell < 2).to_numpy(), NO_INTERVAL, None)
    out.update(_metric_columns(ok, cells, available))
    out.update(_gate_columns(out, cells))
    summary = pd.DataFrame({k: (v.to_numpy() if isinstance(v, pd.Series) else v)
                            for k, v in out.items()})
    if slo:
        for name, value in slo_settings(slo).items():
            summary[name] = value
    boot = _bootstrap_columns(summary["cell_id"].tolist(), ok, requests, resamples)
    return pd.concat([summary, boot], axis=1)


def _bootstrap_columns(cells: list[str], ok_runs: pd.DataFrame, requests: pd.DataFrame | None,
                       resamples: int) -> pd.DataFrame:
    """`<latency>_ms_p<q>_pooled` (over all successful requests of each cell's successful
    cycles) and its `_boot95_low` / `_boot95_high` bounds, one row per cell."""
    columns = [schema.percentile_column(name, q) + part for name in LATENCIES for q in PERCENTILES
               for part in schema.BOOTSTRAP_SUFFIXES]
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
        with one_blas_thread():  # many small products: one thread is faster
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
                    for q, values in stats.items():
                        for part, value in zip(schema.BOOTSTRAP_SUFFIXES, values):
                            rows[schema.percentile_column(name, q) + part][i] = value
    return pd.DataFrame(rows, columns=columns)


def aggregate(paths: Iterable[str | Path], request_paths: Iterable[str | Path] | None = None,
              resamples: int = BOOTSTRAP_RESAMPLES, slo: Mapping | None = None,
              study: str | None = None) -> Aggregation:
    """Read the runs (and their requests.parquet) files and summarise them (`summarise`);
    `slo`: the study's `slo:` section as a dict, or None; `study`: its name."""
    paths = list(paths)
    runs, problems = read_runs(paths)
    if request_paths is None:
        request_paths = [p for p in requests_paths_for(paths) if p.exists()]
    requests, request_problems = read_requests(request_paths)
    return Aggregation(summarise(runs, requests, resamples, slo, study), runs,
                       problems + request_problems)


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
