"""Compare two studies (before/after a change): per cell and metric, the two means, their
difference, and whether the 95% confidence intervals overlap. Non-overlapping intervals are
a conservative sign of a real change (at the 95% level they imply p < 0.05, while
overlapping intervals do not imply "no difference").

Cells are matched by `cell_id` (the hash of the resolved configuration: same model, settings,
workload and measurement), or with `on="settings"` by model, backend and swept settings, for
studies whose workload or protocol differ."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from llm_energy.results import schema

#: The registry's columns marked `compare`.
DEFAULT_METRICS = schema.compare_metrics()

COLUMNS = ("cell_id_before", "cell_id_after", "model", "backend", "settings", "metric",
           "before", "after", "diff", "rel_diff_pct", "before_ci95_low", "before_ci95_high",
           "after_ci95_low", "after_ci95_high", "ci_overlap", "significant", "note")


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def intervals_overlap(a_low, a_high, b_low, b_high) -> bool | None:
    """None when either interval is unknown (fewer than 2 cycles)."""
    if any(_missing(v) for v in (a_low, a_high, b_low, b_high)):
        return None
    return bool(a_low <= b_high and b_low <= a_high)


def _key(value) -> str:
    """A setting as text, the same whether its column came back as int or float (2 vs 2.0)."""
    if _missing(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _settings_key(summary: pd.DataFrame) -> list[str]:
    """Model, backend and the registry's settings (never a metric the registry does not
    list, such as a backend's extra per-cycle columns)."""
    return ["model", "backend", *schema.present_settings(summary)]


def compare(before: pd.DataFrame, after: pd.DataFrame, metrics: Iterable[str] = DEFAULT_METRICS,
            on: str = "cell_id") -> pd.DataFrame:
    """One row per (matched cell, metric), plus one row per unmatched or failed cell."""
    if on == "cell_id":
        keys = ["cell_id"]
        settings = [c for c in _settings_key(before) if c in after.columns]
    elif on == "settings":
        settings = [c for c in _settings_key(before) if c in after.columns]
        keys = settings
    else:
        raise ValueError(f"on must be 'cell_id' or 'settings', not {on!r}")
    b, a = before.copy(), after.copy()
    for frame in (b, a):
        for k in keys:
            frame[k] = frame[k].map(_key)
    merged = b.merge(a, on=keys, how="outer", suffixes=("_b", "_a"), indicator=True)
    rows = []

    def col(row: pd.Series, name: str, side: str):
        return row[name] if name in keys else row.get(f"{name}_{side}")

    for _, r in merged.iterrows():
        base = {"cell_id_before": col(r, "cell_id", "b"), "cell_id_after": col(r, "cell_id", "a"),
                "model": col(r, "model", "b") if r["_merge"] != "right_only" else col(r, "model", "a"),
                "backend": col(r, "backend", "b") if r["_merge"] != "right_only" else col(r, "backend", "a")}
        side = "a" if r["_merge"] == "right_only" else "b"
        base["settings"] = ", ".join(
            f"{c}={_key(col(r, c, side))}" for c in settings if c not in ("model", "backend")
            and _key(col(r, c, side)) != "")
        if r["_merge"] != "both":
            rows.append({**base, "note": f"only in {'before' if r['_merge'] == 'left_only' else 'after'}"})
            continue
        failed = [s for s, label in (("b", "before"), ("a", "after")) if r.get(f"status_{s}") != "ok"]
        if failed:
            rows.append({**base, "note": "failed in " + " and ".join(
                "before" if s == "b" else "after" for s in failed)})
            continue
        for m in metrics:
            x, y = r.get(f"{m}_b"), r.get(f"{m}_a")
            if _missing(x) and _missing(y):
                continue
            lows = [r.get(f"{m}_ci95_low_{s}") for s in "ba"]
            highs = [r.get(f"{m}_ci95_high_{s}") for s in "ba"]
            overlap = intervals_overlap(lows[0], highs[0], lows[1], highs[1])
            diff = None if _missing(x) or _missing(y) else y - x
            rows.append({**base, "metric": m, "before": x, "after": y, "diff": diff,
                         "rel_diff_pct": None if diff is None or x == 0 else 100.0 * diff / x,
                         "before_ci95_low": lows[0], "before_ci95_high": highs[0],
                         "after_ci95_low": lows[1], "after_ci95_high": highs[1],
                         "ci_overlap": overlap,
                         "significant": None if overlap is None else (not overlap),
                         "note": "fewer than 2 cycles: no interval" if overlap is None else None})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def compare_files(before: str | Path, after: str | Path, metrics: Iterable[str] = DEFAULT_METRICS,
                  on: str = "cell_id") -> pd.DataFrame:
    return compare(_read(before), _read(after), metrics, on)


def _read(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)


def _g(v) -> str:
    return "n/a" if _missing(v) else f"{v:.4g}"


def format_table(diff: pd.DataFrame, only_significant: bool = False) -> str:
    """A short human-readable listing for the terminal."""
    lines = []
    rows = diff[diff["metric"].notna()]
    if only_significant:
        rows = rows[rows["significant"].fillna(False).astype(bool)]
    for _, r in rows.iterrows():
        mark = "*" if r["significant"] is True else (" " if r["significant"] is False else "?")
        rel = "" if _missing(r["rel_diff_pct"]) else f" ({r['rel_diff_pct']:+.1f}%)"
        lines.append(f"{mark} {r['model']}/{r['backend']} [{r['settings']}] {r['metric']}: "
                     f"{_g(r['before'])} -> {_g(r['after'])}{rel}")
    for _, r in diff[diff["metric"].isna()].iterrows():
        lines.append(f"! {r['model']}/{r['backend']} [{r['settings']}]: {r['note']}")
    return "\n".join(lines)
