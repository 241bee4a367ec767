"""The data the interactive report embeds (one JSON document): every configuration with its
settings, headline numbers and 95% intervals formatted from the column registry, validity
flags, the leaderboard stability verdict, its place on the Pareto frontiers, and per cell the
output-length histogram and the power time series.

The seam for reference data (e.g. ML.ENERGY leaderboard rows): `build(summary, reference)`
takes a second DataFrame with the summary's columns plus `source` ("reference: ..."); its rows
are drawn beside the measured ones with a marker of their own, and are never on our frontier."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from llm_energy.analysis.export import KEY_FIELDS, _value, leaderboard_stability
from llm_energy.analysis.figures import pareto_cells
from llm_energy.analysis.report_details import (  # noqa: F401 - the report's data, one import
    HISTOGRAM_BINS,
    MAX_POWER_POINTS,
    cell_detail,
    cell_details,
    shading,
)
from llm_energy.results import schema

MEASURED = "measured"
ENERGY = "energy_per_output_token_j"
THROUGHPUT = "output_tokens_per_s"
#: The ITL percentiles the deadline slider offers (registry columns).
ITL_COLUMNS = {q: schema.percentile_column("itl", q) for q in schema.PERCENTILES}
#: (name, x metric, maximise x?) of the two frontier views: energy per token against each.
FRONTIERS = (("throughput", THROUGHPUT, True), ("latency", ITL_COLUMNS[50], False))
#: Everything a point, the comparison and the table show: the report's columns, then the
#: ITL percentiles the slider filters on.
METRICS = tuple(dict.fromkeys([c.name for c in schema.report_columns()] + list(ITL_COLUMNS.values())))
METRIC_INDEX = {m: i for i, m in enumerate(METRICS)}
#: Whole-cycle column → its steady-state counterpart (the export's one mapping): reference
#: rows (ML.ENERGY's numbers are the steady window's) are drawn with those where they lack the
#: whole-cycle ones, and say so.
STEADY_COUNTERPART = {by["cycle"]: by["steady_state"] for by in schema.export_columns().values()
                      if "cycle" in by and "steady_state" in by}


#: Filters every page has; then precision (the export's `weight_precision` column) where
#: present, and every other setting or workload axis whose value differs between cells.
BASE_FACETS = ("model", "backend", "device")
PRECISION = KEY_FIELDS["weight_precision"]


def axes(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(varying, fixed): the settings and workload columns with a value somewhere
    (`schema.present_settings`, `schema.present_workload`), split by whether the value (as
    written, "—" for none) differs between the frame's rows."""
    present = [c for c in dict.fromkeys(schema.present_settings(frame) + schema.present_workload(frame))
               if c not in BASE_FACETS]
    varying = [c for c in present if frame[c].map(fmt_setting).nunique() > 1]
    return varying, [c for c in present if c not in varying]


def facets(frame: pd.DataFrame) -> list[str]:
    """The filter bar's facets: BASE_FACETS, precision, the axes that vary."""
    varying, fixed = axes(frame)
    return [*BASE_FACETS, *([PRECISION] if PRECISION in fixed else []), *varying]


def metric_meta(name: str) -> dict[str, Any]:
    """Label, unit and decimals of a metric, from the registry."""
    c = schema.column(name)
    if c is None:
        raise KeyError(f"{name} is not a registered column")
    return {"name": name, "label": c.display, "unit": c.unit, "digits": c.digits}


def missing(value: Any) -> bool:
    return _value(value) is None


def fmt_number(value: Any, digits: int) -> str:
    """The value with the registry's decimals; "—" where there is none (never "nan")."""
    value = _value(value)
    return "—" if value is None else f"{float(value):.{digits}f}"


def fmt_setting(value: Any) -> str:
    """A setting as written in the study: whole floats as integers (1, not 1.0); "—" for none."""
    value = _value(value)
    if value is None:
        return "—"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def fmt_metric(row: Mapping[str, Any], name: str) -> str:
    """"value (low–high)" with the 95% interval across cycles where the summary has one."""
    digits = metric_meta(name)["digits"]
    text = fmt_number(row.get(name), digits)
    low, high = row.get(f"{name}_ci95_low"), row.get(f"{name}_ci95_high")
    if text != "—" and not missing(low) and not missing(high):
        text += f" ({fmt_number(low, digits)}–{fmt_number(high, digits)})"
    return text


def _numbers(row: Mapping[str, Any], name: str) -> list[float | None] | None:
    """[value, low, high] (the 95% interval across cycles); None where none of them is."""
    out = [None if missing(row.get(k)) else float(row.get(k))
           for k in (name, f"{name}_ci95_low", f"{name}_ci95_high")]
    return None if out == [None, None, None] else out


def numbers(cell: Mapping[str, Any], name: str) -> list[float | None]:
    """A record's [value, low, high] of a metric: the records list them in METRICS order
    (the order of the document's `metrics`), not keyed by name in each of 10,000 cells."""
    return cell["values"][METRIC_INDEX[name]] or [None, None, None]


def _flags(row: Mapping[str, Any]) -> list[str]:
    """The cell's validity flags: its warnings and ML.ENERGY's failed checks."""
    out = []
    for key in ("warnings", "mlenergy_flags"):
        value = row.get(key)
        if value is not None and not isinstance(value, float):
            out += [str(v) for v in value]
    return list(dict.fromkeys(out))


def workload_text(row: Mapping[str, Any]) -> str:
    """The workload a cell ran, from its per-cycle means: requests and tokens per request."""
    n, inp, out = (_value(row.get(k)) for k in ("requests", "input_tokens", "output_tokens"))
    if n is None:
        return "—"
    inp, out = ("—" if t is None or not n else f"{t / n:.1f}" for t in (inp, out))
    return f"{fmt_setting(n)} requests/cycle, {inp} in / {out} out tokens per request"


def cell_record(row: Mapping[str, Any], settings: Iterable[str], source: str,
                stable: tuple[bool, str] | None, frontier: Mapping[str, bool],
                note: str | None = None, axis_names: Iterable[str] = ()) -> dict[str, Any]:
    """One configuration; `axis_names`: the settings and workload columns the filters use."""
    ok = row.get("status", "ok") == "ok"
    cell = {
        "id": str(row["cell_id"]), "note": note, "source": source, "model": str(row["model"]),
        "backend": str(row["backend"]), "device": fmt_setting(row.get("device")),
        "device_name": fmt_setting(row.get("device_name")), "ok": ok,
        "settings": {s: fmt_setting(row.get(s)) for s in settings if not missing(row.get(s))},
        "axes": {a: fmt_setting(row.get(a)) for a in axis_names},
        "workload": workload_text(row),
        "values": [_numbers(row, m) for m in METRICS],
        "flags": _flags(row), "valid": _value(row.get("mlenergy_valid")),
        "stable": None if stable is None else bool(stable[0]),
        "unstable_reason": None if stable is None else (stable[1] or None),
        "energy_source": fmt_setting(row.get("energy_source")),
        "cycles": fmt_setting(row.get("cycles")), "frontier": dict(frontier),
        "error": None if ok else fmt_setting(row.get("error")),
    }
    cell["flagged"] = bool(cell["flags"]) or cell["valid"] is False
    return cell


#: The columns a cell's record reads besides its settings and axes.
RECORD_COLUMNS = ("cell_id", "model", "backend", "device", "device_name", "status", "requests",
                  "input_tokens", "output_tokens", "warnings", "mlenergy_flags",
                  "mlenergy_valid", "energy_source", "cycles", "error",
                  *(f"{m}{suffix}" for m in METRICS for suffix in ("", "_ci95_low", "_ci95_high")))


def _records(frame: pd.DataFrame, *columns: Iterable[str]) -> list[dict[str, Any]]:
    """The rows as dicts of only the named columns (those the frame has): a summary has ~250
    columns, and boxing all of them was most of the report's records at 10,000 cells."""
    names = {c for group in columns for c in group}
    return frame[[c for c in frame.columns if c in names]].to_dict("records")


def _has(frame: pd.DataFrame, *columns: str) -> bool:
    return set(columns) <= set(frame.columns)


def measured_records(summary: pd.DataFrame, axis_names: Iterable[str] = ()) -> list[dict[str, Any]]:
    settings = schema.present_settings(summary)
    fronts = {name: set(pareto_cells(summary, x, ENERGY, not maximise))
              if _has(summary, x, ENERGY) else set() for name, x, maximise in FRONTIERS}
    ok = summary[summary["status"] == "ok"] if len(summary) else summary
    stable = dict(zip(ok["cell_id"], leaderboard_stability(ok, settings))) if len(ok) else {}
    return [cell_record(row, settings, MEASURED, stable.get(row["cell_id"]),
                        {name: row["cell_id"] in front for name, front in fronts.items()},
                        axis_names=axis_names)
            for row in _records(summary, RECORD_COLUMNS, settings, axis_names)]


def reference_records(reference: pd.DataFrame | None,
                      axis_names: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Reference rows (the summary's columns plus `source`): drawn, never on our frontier."""
    if reference is None or not len(reference):
        return []
    settings = schema.present_settings(reference)
    out = []
    for i, row in enumerate(reference.to_dict("records")):
        row = {"status": "ok", **row}
        row["cell_id"] = next((str(row[k]) for k in ("cell_id", "reference_id")
                               if not missing(row.get(k))), f"reference#{i}")
        row["model"] = next((row[k] for k in ("model", "model_id") if not missing(row.get(k))), "—")
        steady = [c for c, s in STEADY_COUNTERPART.items()
                  if missing(row.get(c)) and not missing(row.get(s))]
        for column in steady:
            for suffix in ("", "_ci95_low", "_ci95_high"):
                row[column + suffix] = row.get(STEADY_COUNTERPART[column] + suffix)
        note = (f"{', '.join(metric_meta(c)['label'] for c in steady)}: the steady-state "
                "window's (the publisher's numbers)" if steady else None)
        stable = _value(row.get("is_stable"))
        out.append(cell_record(row, settings, str(row["source"]),
                               None if stable is None else (bool(stable), ""),
                               {name: False for name, _, _ in FRONTIERS}, note, axis_names))
    return out


def _interval(row: Mapping[str, Any], name: str) -> list[float | None] | None:
    """[low, high, pooled] of a latency percentile's bootstrap over requests, if it has one."""
    low, high = row.get(f"{name}_boot95_low"), row.get(f"{name}_boot95_high")
    if missing(low) or missing(high):
        return None
    pooled = row.get(f"{name}_pooled")
    return [float(low), float(high), None if missing(pooled) else float(pooled)]


def table_spec(summary: pd.DataFrame) -> dict[str, Any]:
    """What the page's per-model tables (templates/table.js) show beyond the cells' records:
    the registry's report columns [name, label, decimals, basis], each model's settings and
    workload columns (those with a value in one of its rows), the study's `fixed` axes
    (`axes`: their columns hidden until asked for), and per cell (compact keys) `s` the
    values of its model's columns, `b` bootstrap intervals, `n` the cycle note."""
    columns = [[c.name, c.display, c.digits, c.basis] for c in schema.report_columns()]
    models, rows = [], {}
    for model, group in summary.groupby("model", sort=True) if len(summary) else ():
        settings = schema.present_settings(group) + schema.present_workload(group)
        models.append([str(model), settings])
        boots = [f"{m}{suffix}" for m, _, _, _ in columns
                 for suffix in ("_boot95_low", "_boot95_high", "_pooled")]
        for row in _records(group, ("cell_id", "status", "cycles", "ci_note"), settings, boots):
            extra: dict[str, Any] = {"s": [fmt_setting(row.get(s)) for s in settings]}
            boot = {m: b for m, _, _, _ in columns if (b := _interval(row, m)) is not None}
            if boot:
                extra["b"] = boot
            cycles = _value(row.get("cycles"))
            if row.get("status", "ok") == "ok" and (cycles is None or cycles < 2):
                extra["n"] = fmt_setting(row.get("ci_note")) if not missing(row.get("ci_note")) \
                    else "fewer than 2 cycles: no interval"
            rows[str(row["cell_id"])] = extra
    return {"columns": columns, "models": models, "rows": rows,
            "fixed": axes(summary)[1] if len(summary) else []}


def build(summary: pd.DataFrame, reference: pd.DataFrame | None = None,
          cell_dirs: Mapping[str, Path] | None = None, workers: int = 1) -> dict[str, Any]:
    """The embedded document. `cell_dirs`: cell id → its results folder (for the details),
    read in `workers` processes."""
    facet_names = facets(summary)
    axis_names = [f for f in facet_names if f not in BASE_FACETS]
    cells = measured_records(summary, axis_names) + reference_records(reference, axis_names)
    details = cell_details(cell_dirs or {}, workers)
    return {"metrics": {m: metric_meta(m) for m in METRICS}, "energy": ENERGY,
            "throughput": THROUGHPUT, "itl": {str(q): c for q, c in ITL_COLUMNS.items()},
            "frontiers": {name: x for name, x, _ in FRONTIERS}, "cells": cells,
            "shading": shading(), "facets": facet_names,
            "table": table_spec(summary), "details": details}


def to_script(data: Mapping[str, Any]) -> str:
    """The document as the text of a `<script type="application/json">` element."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
