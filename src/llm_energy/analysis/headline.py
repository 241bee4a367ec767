"""The report's opening answer, per model (and workload, where a workload axis varies): the
lowest-energy configuration (J/token), the fastest (tokens/s) and, with an `slo:` section, the
cheapest that meets the SLO, each with its 95% interval and the settings that identify it.

The choices are `recommend.recommend()`'s (the same answer as `llm-energy recommend`): its
winner without the SLO is the lowest-energy cell and its `fastest_cell_id` the fastest; its
winner with the study's SLO target is the cheapest meeting it. Nothing is chosen here."""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from llm_energy.analysis import recommend
from llm_energy.analysis.report_data import ENERGY, THROUGHPUT, fmt_metric, fmt_setting, metric_meta
from llm_energy.analysis.slo import TARGET_COLUMN
from llm_energy.results import schema

#: (key, heading) of the three answers, in the order shown.
KINDS = (("energy", "Lowest energy"), ("fastest", "Fastest"), ("slo", "Cheapest meeting the SLO"))


def _has_slo(summary: pd.DataFrame) -> bool:
    return TARGET_COLUMN in summary and bool(summary[TARGET_COLUMN].notna().any())


def _settings(summary: pd.DataFrame, group: pd.DataFrame, row: pd.Series) -> str:
    """The settings that tell the group's cells apart, else (one cell) those that differ in
    the study, written as in the study (4, not 4.0); "the study's only configuration"."""
    present = schema.present_settings(group)
    differ = [n for n in present if group[n].astype(str).nunique() > 1] or \
        [n for n in present if summary[n].astype(str).nunique() > 1]
    return ", ".join(f"{n}={fmt_setting(row[n])}" for n in differ if fmt_setting(row[n]) != "—") \
        or "the study's only configuration"


def _entry(summary: pd.DataFrame, group: pd.DataFrame, cell_id: Any, metric: str,
           extra: str | None = None) -> dict[str, Any] | None:
    if not isinstance(cell_id, str):
        return None
    row = summary[summary["cell_id"] == cell_id].iloc[0]
    meta = metric_meta(metric)
    return {"cell_id": cell_id, "backend": str(row["backend"]), "metric": metric,
            "value": fmt_metric(row, metric), "unit": meta["label"],
            "settings": _settings(summary, group, row), "note": extra}


def headline(summary: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per model and workload: `where` (model, workload text) and per KINDS key an
    entry (cell, backend, settings text, value with its 95% interval) or, for `slo`, None
    without an SLO and a `verdict` text when no cell meets it."""
    if summary.empty or ENERGY not in summary:
        return []
    plain = recommend.recommend(summary.drop(columns=[TARGET_COLUMN], errors="ignore"))
    slo = recommend.recommend(summary) if _has_slo(summary) else None
    workload = recommend.workload_columns(summary)
    keys = ["model", *workload]
    out = []
    for i, rec in plain.iterrows():
        mask = pd.Series(True, index=summary.index)
        for k in keys:
            mask &= summary[k].isna() if pd.isna(rec[k]) else summary[k] == rec[k]
        group = summary[mask]
        row: dict[str, Any] = {"model": str(rec["model"]),
                               "workload": ", ".join(f"{k}={fmt_setting(rec[k])}" for k in workload),
                               "energy": None, "fastest": None, "slo": None, "verdict": None}
        if rec["verdict"] == recommend.OK:
            row["energy"] = _entry(summary, group, rec["cell_id"], ENERGY)
            row["fastest"] = _entry(summary, group, rec.get("fastest_cell_id"), THROUGHPUT)
        if slo is not None:
            s = slo.iloc[i]
            if s["verdict"] == recommend.OK:
                row["slo"] = _entry(summary, group, s["cell_id"], ENERGY,
                                    f"SLO attainment {s[recommend.ATTAINMENT]:.3f} "
                                    f"≥ {s['slo_target_attainment']:g}")
            else:
                best = s.get("best_attainment")
                row["verdict"] = str(s["verdict"]) + (
                    "" if best is None or pd.isna(best) else f" (best attainment {best:.3f})")
        out.append(row)
    return out


def _cell(entry: dict[str, Any] | None, verdict: str | None = None) -> str:
    if entry is None:
        return f'<td class="t">{html.escape(verdict or "—")}</td>'
    note = f'<br><span class="ci">{html.escape(entry["note"])}</span>' if entry["note"] else ""
    return (f'<td class="t" data-cell="{html.escape(entry["cell_id"])}"><b>{html.escape(entry["value"])}'
            f'</b> {html.escape(entry["unit"])}<br>{html.escape(entry["backend"])} · '
            f'{html.escape(entry["settings"])} <code>{html.escape(entry["cell_id"])}</code>{note}</td>')


def section(summary: pd.DataFrame) -> str:
    """The headline as the report's first section (empty when there is nothing to say)."""
    rows = headline(summary)
    if not rows:
        return ""
    with_slo = _has_slo(summary)
    kinds = [k for k in KINDS if k[0] != "slo" or with_slo]
    workload = any(r["workload"] for r in rows)
    head = '<th class="t">model</th>' + ('<th class="t">workload</th>' if workload else "") + \
        "".join(f'<th class="t">{h}</th>' for _, h in kinds)
    body = "".join(
        f'<tr data-model="{html.escape(r["model"])}"><th class="t">{html.escape(r["model"])}</th>'
        + (f'<td class="t">{html.escape(r["workload"])}</td>' if workload else "")
        + "".join(_cell(r[k], r["verdict"] if k == "slo" else "no successful cell") for k, _ in kinds)
        + "</tr>" for r in rows)
    return ('<section id="headline"><h2>The answer</h2><p>Per model, from the cells that succeeded: '
            "value over all cycles (95% interval across cycles), the backend and the settings "
            "that set the configuration apart (<code>llm-energy recommend</code> gives the same"
            f').</p><table class="headline"><thead><tr>{head}</tr></thead><tbody>{body}'
            "</tbody></table></section>")
