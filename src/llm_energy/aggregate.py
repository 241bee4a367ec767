"""All cells' cycles → one summary row per cell: mean, standard deviation and a Student-t
95% confidence interval across cycles for every headline metric. Failed cells stay in the
summary with their error; unreadable result files are reported by path, not fatal."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd
import pyarrow.parquet as pq

from llm_energy.results import RUN_COLUMNS, SCHEMA_VERSION

HEADLINE_METRICS = (
    "energy_per_output_token_j", "energy_per_request_j", "output_tokens_per_s", "avg_power_w",
    "total_energy_j", "net_energy_j", "idle_power_w", "duration_s", "steady_state_energy_j",
    "ttft_ms_p50", "ttft_ms_p90", "itl_ms_p50", "itl_ms_p90", "itl_ms_p95", "itl_ms_p99",
    "tpot_ms_p50", "e2e_ms_p50", "e2e_ms_p90", "achieved_tflops", "mfu", "peak_memory_mb",
)

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


def _settings_columns(runs: pd.DataFrame) -> list[str]:
    return [c for c in runs.columns if c not in RUN_COLUMNS]


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    settings = _settings_columns(runs)
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
        rows.append(row)
    return pd.DataFrame(rows)


def aggregate(paths: Iterable[str | Path]) -> Aggregation:
    runs, problems = read_runs(paths)
    return Aggregation(summarise(runs), runs, problems)


def write_summary(agg: Aggregation, parquet_path: str | Path, csv_path: str | Path) -> None:
    agg.summary.to_parquet(parquet_path, index=False)
    flat = agg.summary.copy()
    flat["warnings"] = flat["warnings"].map(lambda ws: " | ".join(ws) if ws is not None else "")
    flat.to_csv(csv_path, index=False)
