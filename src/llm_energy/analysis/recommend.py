"""The energy-optimal configuration under a latency SLO: per model and workload, the cell with
the lowest energy objective (J/token, or J per SLO-meeting request) among those whose SLO
attainment reaches the target, and what it costs against the fastest cell. Used by
`llm-energy recommend`; method: docs/methodology.md#energy-optimal-configuration."""

from __future__ import annotations

import pandas as pd

from llm_energy.analysis.slo import TARGET_COLUMN
from llm_energy.results import schema

#: Energy objectives to minimise (summary columns, lower is better).
OBJECTIVES = ("energy_per_output_token_j", "energy_per_slo_request_j",
              "energy_per_slo_output_token_j", "energy_per_request_j")
DEFAULT_OBJECTIVE = OBJECTIVES[0]
#: What "fastest" means: the highest output throughput.
SPEED = "output_tokens_per_s"
ATTAINMENT = "slo_attainment"
NO_CELL = "no cell meets the SLO"
#: The verdict of a group with a winner.
OK = "ok"


def workload_columns(summary: pd.DataFrame) -> list[str]:
    """The workload columns (`schema.WORKLOAD`) whose values differ between cells (a sweep
    axis: rate, concurrency, dataset, ...): cells with other values are other workloads.
    `arrival` is left out: within a study it only says whether a cell is offline (all at
    once) or a server, and those cells are compared at one workload when nothing else
    differs (a rate sweep's offline cells, whose rate is null, form their own group)."""
    return [name for name in schema.WORKLOAD if name != "arrival" and name in summary.columns
            and summary[name].dropna().astype(str).nunique() > 1]


def _settings_text(row: pd.Series, settings: list[str]) -> str:
    return ", ".join(f"{name}={row[name]}" for name in settings
                     if not (isinstance(row[name], float) and pd.isna(row[name])))


def recommend(summary: pd.DataFrame, objective: str = DEFAULT_OBJECTIVE,
              target: float | None = None) -> pd.DataFrame:
    """One row per (model, workload) of `summary` (summary.parquet as a frame).

    Candidates are the cells with status `ok` and a value of `objective`; with an SLO target
    (`target`, else the summary's `slo_target_attainment`; none when the study has no `slo:`)
    only those with `slo_attainment ≥ target`. The winner has the lowest `objective` (ties:
    the lower `cell_id`). Columns: `model`, workload columns, `verdict` (`ok` or
    `no cell meets the SLO`), `cell_id`, `backend`, `settings` (text: the settings that
    differ within the group), the objective's value
    and its `_ci95_low`/`_ci95_high`, `slo_attainment`, `output_tokens_per_s`, the fastest
    candidate-or-not cell (`fastest_cell_id`, its objective value and throughput) and
    `energy_saving_vs_fastest_pct` = (1 − winner ÷ fastest) × 100 of the objective,
    `throughput_cost_vs_fastest_pct` = (1 − winner ÷ fastest) × 100 of `output_tokens_per_s`.
    Without any candidate, `verdict` says so and `best_attainment` gives the highest reached.

    Raises ValueError for an unknown objective, or an SLO asked of a summary without one."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}: one of {', '.join(OBJECTIVES)}")
    missing = [c for c in ("cell_id", "model", "backend", "status") if c not in summary]
    if missing:
        raise ValueError(f"not an llm-energy summary: no column(s) {', '.join(missing)}")
    if target is None and TARGET_COLUMN in summary and summary[TARGET_COLUMN].notna().any():
        target = float(summary[TARGET_COLUMN].dropna().iloc[0])
    needs_slo = target is not None or "slo" in objective
    if needs_slo and ATTAINMENT not in summary:
        raise ValueError("the summary has no SLO columns: add an `slo:` section to the study "
                         "and re-run the aggregation (docs/methodology.md#slos-and-goodput)")
    if objective not in summary:
        raise ValueError(f"the summary has no column {objective!r}")
    keys = ["model", *workload_columns(summary)]
    present = schema.present_settings(summary)
    rows = []
    for key, group in summary.groupby(keys, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        out: dict[str, object] = dict(zip(keys, key))
        usable = group[(group["status"] == "ok")
                       & pd.to_numeric(group[objective], errors="coerce").notna()]
        usable = usable.sort_values([objective, "cell_id"])
        meets = usable if target is None else usable[
            pd.to_numeric(usable[ATTAINMENT], errors="coerce") >= target]
        out["slo_target_attainment"] = target
        if meets.empty:
            attained = pd.to_numeric(group.get(ATTAINMENT), errors="coerce") \
                if ATTAINMENT in group else pd.Series(dtype=float)
            out["verdict"] = NO_CELL if target is not None and len(usable) else \
                "no successful cell"
            out["best_attainment"] = attained.max() if attained.notna().any() else None
            rows.append(out)
            continue
        best = meets.iloc[0]
        # The settings that tell the group's cells apart (all of them when none differ).
        settings = [n for n in present if group[n].astype(str).nunique() > 1] or present
        out.update(verdict=OK, cell_id=best["cell_id"], backend=best["backend"],
                   settings=_settings_text(best, settings), objective=objective)
        for suffix in ("", "_ci95_low", "_ci95_high"):
            out[objective + suffix] = best.get(objective + suffix)
        out[ATTAINMENT] = best.get(ATTAINMENT)
        out[SPEED] = best.get(SPEED)
        speeds = pd.to_numeric(usable[SPEED], errors="coerce") if SPEED in usable else None
        if speeds is not None and speeds.notna().any():
            fastest = usable.loc[speeds.idxmax()]
            out.update(fastest_cell_id=fastest["cell_id"],
                       **{f"fastest_{objective}": fastest[objective],
                          f"fastest_{SPEED}": fastest[SPEED]})
            out["energy_saving_vs_fastest_pct"] = (1 - best[objective] / fastest[objective]) * 100
            out["throughput_cost_vs_fastest_pct"] = (1 - best[SPEED] / fastest[SPEED]) * 100
        rows.append(out)
    return pd.DataFrame(rows)


def report_section(summary: pd.DataFrame) -> str:
    """The report's "Energy-optimal configuration" section: `format_table(recommend(summary))`
    as an HTML list, one item per model and workload (the same answer as `llm-energy
    recommend`). Empty when the summary lacks the default objective."""
    import html

    if summary.empty or DEFAULT_OBJECTIVE not in summary:
        return ""
    lines = format_table(recommend(summary)).splitlines()
    return ('<h2 id="recommendation">Energy-optimal configuration</h2><p>Per model and workload, '
            f"the successful cell with the lowest <code>{DEFAULT_OBJECTIVE}</code>"
            + (" among those meeting the SLO target" if TARGET_COLUMN in summary
               and summary[TARGET_COLUMN].notna().any() else "")
            + ", with its 95% interval and its cost against the fastest cell "
            "(<code>llm-energy recommend</code>; power limits and clocks are axes like any "
            "other).</p><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines)
            + "</ul>")


def format_table(table: pd.DataFrame) -> str:
    """The recommendation as aligned text, one line per model and workload."""
    if table.empty:
        return "no cells in the summary"
    lines = []
    for _, row in table.iterrows():
        where = ", ".join(f"{k}={row[k]}" for k in ("model", *[
            c for c in table.columns if c in workload_columns(table)]))
        if row["verdict"] != "ok":
            best = row.get("best_attainment")
            reached = "" if best is None or pd.isna(best) else f" (best attainment {best:.3f})"
            target = row.get("slo_target_attainment")
            wanted = "" if target is None or pd.isna(target) else f" at attainment ≥ {target:g}"
            lines.append(f"{where}: {row['verdict']}{wanted}{reached}")
            continue
        objective = row["objective"]
        low, high = row.get(f"{objective}_ci95_low"), row.get(f"{objective}_ci95_high")
        interval = "" if low is None or pd.isna(low) else f" [95% CI {low:.4g}–{high:.4g}]"
        slo = "" if pd.isna(row.get(ATTAINMENT, float("nan"))) else \
            f"; SLO attainment {row[ATTAINMENT]:.3f}"
        text = (f"{where}: {row['cell_id']} {row['backend']} ({row['settings']}): "
                f"{objective} {row[objective]:.4g}{interval}{slo}")
        if row.get("fastest_cell_id") == row["cell_id"]:
            text += "; also the fastest"
        elif isinstance(row.get("fastest_cell_id"), str):
            saving, cost = row["energy_saving_vs_fastest_pct"], row["throughput_cost_vs_fastest_pct"]
            text += (f"; vs fastest {row['fastest_cell_id']}: {abs(saving):.1f}% "
                     f"{'less' if saving >= 0 else 'more'} energy, {abs(cost):.1f}% "
                     f"{'lower' if cost >= 0 else 'higher'} {SPEED}")
        lines.append(text)
    return "\n".join(lines)
