"""The data the interactive report embeds (one JSON document): every configuration with its
settings, headline numbers and 95% intervals formatted from the column registry, validity
flags, the leaderboard stability verdict, its place on the Pareto frontiers, and per cell the
output-length histogram and the power time series.

The seam for reference data (e.g. ML.ENERGY leaderboard rows): `build(summary, reference)`
takes a second DataFrame with the summary's columns plus `source` ("reference: ..."); its rows
are drawn beside the measured ones with a marker of their own, and are never on our frontier."""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llm_energy.analysis.export import KEY_FIELDS, _value, histogram, leaderboard_stability
from llm_energy.analysis.figures import pareto_cells
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
#: Whole-cycle column → its steady-state counterpart (the export's one mapping): reference
#: rows (ML.ENERGY's numbers are the steady window's) are drawn with those where they lack the
#: whole-cycle ones, and say so.
STEADY_COUNTERPART = {by["cycle"]: by["steady_state"] for by in schema.export_columns().values()
                      if "cycle" in by and "steady_state" in by}
HISTOGRAM_BINS = 20
#: Power samples kept per device and cell (evenly strided), so 10,000 cells stay a page a
#: browser opens.
MAX_POWER_POINTS = 120


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


def _numbers(row: Mapping[str, Any], name: str) -> list[float | None]:
    return [None if missing(row.get(k)) else float(row.get(k))
            for k in (name, f"{name}_ci95_low", f"{name}_ci95_high")]


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


def hover_text(cell: Mapping[str, Any]) -> str:
    """Plotly hover (its HTML subset; names escaped): the configuration, the headline
    numbers with intervals, the flags."""
    def esc(text: str) -> str:
        return html.escape(text, quote=False)

    cell = {k: esc(v) if isinstance(v, str) else v for k, v in cell.items()}
    cell["flags"] = [esc(f) for f in cell["flags"]]
    settings = ", ".join(f"{esc(k)}={esc(v)}" for k, v in cell["settings"].items())
    lines = [f"<b>{cell['model']}</b> · {cell['backend']} · {cell['device_name']}",
             f"{cell['source']} · {'cell' if cell['source'] == MEASURED else 'row'} {cell['id']}",
             settings or "default settings",
             f"workload: {cell['workload']}"] + ([cell["note"]] if cell["note"] else [])
    lines += [f"{metric_meta(m)['label']}: {cell['text'][m]}" for m in METRICS
              if cell["text"][m] != "—"]
    stable = {True: "stable", False: f"unstable ({cell['unstable_reason']})", None: "—"}
    lines.append(f"leaderboard rule: {stable[cell['stable']]}; flags: "
                 + ("; ".join(cell["flags"]) or "none"))
    return "<br>".join(lines)


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
        "values": {m: _numbers(row, m) for m in METRICS},
        "text": {m: fmt_metric(row, m) for m in METRICS},
        "flags": _flags(row), "valid": _value(row.get("mlenergy_valid")),
        "stable": None if stable is None else bool(stable[0]),
        "unstable_reason": None if stable is None else (stable[1] or None),
        "energy_source": fmt_setting(row.get("energy_source")),
        "cycles": fmt_setting(row.get("cycles")), "frontier": dict(frontier),
        "error": None if ok else fmt_setting(row.get("error")),
    }
    cell["flagged"] = bool(cell["flags"]) or cell["valid"] is False
    cell["hover"] = hover_text(cell) if ok else ""
    return cell


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
            for row in summary.to_dict("records")]


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


def _strided(values: np.ndarray, step: int) -> list[float]:
    return [round(float(v), 3) for v in values[::step]]


def shading() -> dict[str, str]:
    """The power chart's shading colours (CSS), the same as the paper figure's: each phase
    outside the cycles (load, idle, warmup), the measured cycles, their steady state."""
    from matplotlib.colors import to_hex

    from llm_energy.analysis.cell_figures import CYCLE_COLOUR, PHASE_COLOURS, STEADY_COLOUR

    return {**{p: to_hex(c) for p, c in PHASE_COLOURS.items()},
            "cycle": to_hex(CYCLE_COLOUR), "steady state": to_hex(STEADY_COLOUR)}


def cell_detail(cell_dir: Path) -> dict[str, Any]:
    """`_cell_detail`, or what of it could be read: a result file that cannot be read (a
    truncated or foreign Parquet file; the summary reports it too) leaves its part of the
    detail empty and is named in `unreadable` ("file: error") instead of failing the report."""
    try:
        return _cell_detail(cell_dir)
    except Exception as exc:  # any reader error: report it, build the rest
        partial: dict[str, Any] = {"lengths": None, "power": [], "windows": [], "phases": []}
        for name in ("requests.parquet", "timeseries.parquet", "runs.parquet"):
            try:
                import pyarrow.parquet as pq

                pq.read_metadata(Path(cell_dir) / name)
            except FileNotFoundError:
                continue
            except Exception as file_exc:
                partial.setdefault("unreadable", []).append(
                    f"{name}: {type(file_exc).__name__}: {file_exc}")
        if "unreadable" not in partial:
            partial["unreadable"] = [f"{type(exc).__name__}: {exc}"]
        return partial


def _cell_detail(cell_dir: Path) -> dict[str, Any]:
    """One cell's output-length histogram (successful requests, all cycles) and its power
    samples per device (strided to MAX_POWER_POINTS) with the cycle and steady windows and
    the spans of the phases before the cycles (`phases`: [phase, first t, last t]).
    Read with pyarrow column by column: at 10,000 cells this is most of the report's time."""
    import pyarrow.parquet as pq

    from llm_energy.analysis.cell_figures import PHASE_COLOURS, cycle_windows

    out: dict[str, Any] = {"lengths": None, "power": [], "windows": [], "phases": []}
    requests = Path(cell_dir) / "requests.parquet"
    if requests.is_file():
        req = pq.read_table(requests, columns=["output_tokens", "success"], use_threads=False)
        ok = req.column("success").fill_null(False).to_numpy(zero_copy_only=False).astype(bool)
        lengths = req.column("output_tokens").to_numpy(zero_copy_only=False).astype(float)[ok]
        lengths = lengths[~np.isnan(lengths)]
        if len(lengths):
            out["lengths"] = histogram(lengths, np.histogram_bin_edges(lengths, bins=HISTOGRAM_BINS))
    series, runs = Path(cell_dir) / "timeseries.parquet", Path(cell_dir) / "runs.parquet"
    if series.is_file():
        table = pq.read_table(series, columns=["t_s", "device", "power_w", "power_source", "phase"],
                              use_threads=False)
        t = table.column("t_s").to_numpy(zero_copy_only=False).astype(float)
        w = table.column("power_w").to_numpy(zero_copy_only=False).astype(float)
        devices = np.asarray(table.column("device").to_pylist(), dtype=object)
        sources = table.column("power_source").to_pylist()
        keep = ~np.isnan(w)
        order = np.argsort(t[keep], kind="stable")
        t, w, devices = t[keep][order], w[keep][order], devices[keep][order]
        sources = [s for s, k in zip(sources, keep) if k]
        for device in sorted(set(devices)):
            mine = devices == device
            step = max(1, -(-int(mine.sum()) // MAX_POWER_POINTS))
            source = next((s for s, m in zip(sources, mine) if m and s), "")
            out["power"].append({"device": str(device), "source": str(source),
                                 "t_s": _strided(t[mine], step), "power_w": _strided(w[mine], step)})
        ts = pd.DataFrame({"t_s": table.column("t_s").to_numpy(zero_copy_only=False),
                           "phase": table.column("phase").to_pylist()})
        spans = ts[ts["phase"].isin(list(PHASE_COLOURS))].groupby("phase")["t_s"].agg(["min", "max"])
        out["phases"] = [[str(p), float(r["min"]), float(r["max"])] for p, r in spans.iterrows()]
        if runs.is_file():
            out["windows"] = [[float(a), float(b), None if s is None else [float(x) for x in s]]
                              for a, b, s in cycle_windows(pq.read_table(runs, use_threads=False).to_pandas(), ts)]
    return out


#: From this many cells on, the details are read in `workers` processes.
PARALLEL_FROM = 200


def cell_details(cell_dirs: Mapping[str, Path], workers: int = 1) -> dict[str, dict[str, Any]]:
    """`cell_detail` of every cell (cell id → detail), in worker processes for many cells."""
    ids, dirs = [c for c in sorted(cell_dirs)], [cell_dirs[c] for c in sorted(cell_dirs)]
    if workers <= 1 or len(ids) < PARALLEL_FROM:
        return dict(zip(ids, map(cell_detail, dirs)))
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the parent already runs Arrow's thread pools.
    with ProcessPoolExecutor(max_workers=workers,
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        return dict(zip(ids, pool.map(cell_detail, dirs, chunksize=64)))


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
        for row in group.to_dict("records"):
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
