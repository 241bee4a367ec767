"""`results/<study>/report.html`: one self-contained page (no network: figures embedded,
plotly.js inlined) that opens on the interactive views (`report_page`, data from
`report_data`: charts with hover, filters, the ITL-deadline and energy-budget sliders, the
Pareto frontier, a comparison and a per-cell detail), then the summary per model (headline
metrics first, sortable by any column, rows filtered by the same controls), a
measured/estimated badge on every number, the Pareto set marked, the static paper figures,
failed and pruned cells with reasons, the environment and per-cell provenance."""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from llm_energy.analysis import headline, recommend, report_data, report_page
from llm_energy.analysis.figures import CAPTIONS, pareto_cells
from llm_energy.analysis.reference import report_section
from llm_energy.results import schema

# The report's table: the registry's columns with a `report` position, each with its label,
# decimals and basis: "energy" (the cell's energy source: measured or estimate), "timing"
# (measured with the host clock), "flops" (analytic FLOP count / measured time: an estimate).
TABLE_COLUMNS = tuple((c.name, c.display, c.digits, c.basis) for c in schema.report_columns())
ITL_FILTER_PERCENTILES = schema.PERCENTILES

def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _is_missing(value: Any) -> bool:
    try:
        return value is None or bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _fmt(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}"


def _badge(kind: str, source: Any) -> str:
    """M (measured) or E (estimated), with the source as tooltip."""
    if kind == "timing":
        return '<span class="badge measured" title="measured (host clock)">M</span>'
    if kind == "flops":
        return ('<span class="badge estimate" title="estimate: analytic FLOP count / measured '
                'time">E</span>')
    if _is_missing(source) or not source:
        return '<span class="badge estimate" title="no energy sensor">E</span>'
    if "estimate" in str(source):
        return f'<span class="badge estimate" title="estimate: {_esc(source)}">E</span>'
    return f'<span class="badge measured" title="measured: {_esc(source)}">M</span>'


def _number(row: pd.Series, metric: str, digits: int, kind: str) -> str:
    value = row.get(metric)
    if _is_missing(value):
        return '<td data-v="">n/a</td>'
    text = _fmt(value, digits)
    low, high = row.get(f"{metric}_ci95_low"), row.get(f"{metric}_ci95_high")
    if not _is_missing(low) and not _is_missing(high):
        text += (f' <span class="ci" title="95% interval across cycles (docs/methodology.md)">'
                 f'({_fmt(low, digits)}–{_fmt(high, digits)})</span>')
    b_low, b_high = row.get(f"{metric}_boot95_low"), row.get(f"{metric}_boot95_high")
    if not _is_missing(b_low) and not _is_missing(b_high):
        text += (f' <span class="ci" title="pooled over requests {_fmt(row.get(f"{metric}_pooled"), digits)}; '
                 f'95% bootstrap interval">[{_fmt(b_low, digits)}, {_fmt(b_high, digits)}]</span>')
    return f'<td data-v="{value}">{text}{_badge(kind, row.get("energy_source"))}</td>'


def _as_list(value: Any) -> list[Any]:
    return [] if value is None or isinstance(value, float) else list(value)


def _source_badge(source: Any) -> str:
    if _is_missing(source) or not source:
        return '<span class="badge estimate">no energy sensor</span>'
    kind = "estimate" if "estimate" in str(source) else "measured"
    label = kind if str(source) == kind else f"{kind}: {_esc(source)}"
    return f'<span class="badge {kind}">{label}</span>'


def _image(path: Path, caption: str | None = None) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    img = f'<img alt="{_esc(path.stem)}" src="data:image/png;base64,{data}">'
    return f"<figure>{img}<figcaption>{_esc(caption)}</figcaption></figure>" if caption else img


def _settings_columns(summary: pd.DataFrame) -> list[str]:
    """The swept and fixed settings with a value in some row (the registry's settings), then
    the study and workload columns (`schema.WORKLOAD`: cells of a rate sweep differ there)."""
    return schema.present_settings(summary) + schema.present_workload(summary)


def _row_data(r: pd.Series) -> str:
    """Filter keys on a row: energy per token and the ITL percentiles."""
    attrs = [f'data-energy="{r["energy_per_output_token_j"]}"'] \
        if not _is_missing(r.get("energy_per_output_token_j")) else ['data-energy=""']
    attrs += [f'data-itl-p{q}="{r.get(schema.percentile_column("itl", q))}"'
              for q in ITL_FILTER_PERCENTILES if not _is_missing(r.get(schema.percentile_column("itl", q)))]
    return " ".join(attrs)


def _model_table(summary: pd.DataFrame, pareto: set[str], fixed: Iterable[str] = ()) -> str:
    """`fixed`: the axes with one value in the whole study: their columns are hidden until
    "show the settings that do not vary" is ticked."""
    settings = _settings_columns(summary)
    hide = {c: ' fixed' if c in set(fixed) else "" for c in settings}
    # Headline metrics first (J/token, tok/s, ... in the registry's `report` order), then the
    # settings: the answer is on screen without scrolling right.
    head = '<th class="t">backend</th>' + \
        "".join(f"<th>{_esc(label)}</th>" for _, label, _, _ in TABLE_COLUMNS) + \
        "".join(f'<th class="t{hide[c]}">{_esc(c)}</th>' for c in settings) + \
        '<th class="t">cycles</th><th class="t">energy</th><th class="t">Pareto</th><th class="t">cell</th>'
    rows = []
    for _, r in summary.iterrows():
        cells = [f'<td class="t" data-v="{_esc(r["backend"])}">{_esc(r["backend"])}</td>']
        setting_cells = [f'<td class="t{hide[c]}" data-v="{_esc(r.get(c))}">'
                         f'{_esc(report_data.fmt_setting(r.get(c)))}</td>' for c in settings]
        data = ""
        if r["status"] != "ok":
            # One cell per column (no colspan), so sorting by column index stays aligned.
            cells.append(f'<td class="t failed" data-v="">failed: {_esc(r.get("error"))}</td>')
            cells += ['<td data-v=""></td>'] * (len(TABLE_COLUMNS) - 1)
            cells += setting_cells + ['<td data-v=""></td>'] * 3
        else:
            data = " " + _row_data(r)
            cells += [_number(r, m, d, kind) for m, _, d, kind in TABLE_COLUMNS]
            cells += setting_cells
            note = "" if r["cycles"] >= 2 else \
                f' <span class="warn">({_esc(r.get("ci_note") or "fewer than 2 cycles: no interval")})</span>'
            cells.append(f'<td class="t" data-v="{r["cycles"]}">{r["cycles"]}{note}</td>')
            cells.append(f'<td class="t" data-v="{_esc(r.get("energy_source"))}">'
                         f'{_source_badge(r.get("energy_source"))}</td>')
            on_front = r["cell_id"] in pareto
            mark = '<span class="badge pareto">frontier</span>' if on_front else ""
            cells.append(f'<td class="t" data-v="{int(on_front)}">{mark}</td>')
        cid = _esc(r["cell_id"])
        pick = (f'<input type="checkbox" class="pick" data-cell="{cid}" title="compare"> ',
                f' <button class="detail" data-cell="{cid}">detail</button>') \
            if r["status"] == "ok" else ("", "")
        cells.append(f'<td class="t" data-v="{cid}">{pick[0]}<code>{cid}</code>{pick[1]}</td>')
        rows.append(f'<tr data-cell="{_esc(r["cell_id"])}"{data}>{"".join(cells)}</tr>')
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _environment(provenance: dict[str, dict[str, Any]]) -> str:
    """What the cells share (or the distinct values, where they differ)."""
    if not provenance:
        return "<p>No provenance files.</p>"
    fields = {
        "host": lambda p: p.get("host"), "platform": lambda p: p.get("platform"),
        "CPU": lambda p: f'{p.get("cpu_model")} ({p.get("cpu_count")} logical CPUs)',
        "GPUs": lambda p: ", ".join(g.get("name", "?") for g in p.get("gpus") or []) or "none",
        "GPU driver / CUDA": lambda p: f'{p.get("driver_version")} / {p.get("cuda_driver_version")}'
        if p.get("driver_version") else "n/a",
        "Python": lambda p: p.get("python"),
        "energy sources": lambda p: ", ".join(f"{k}: {v}" for k, v in sorted((p.get("energy_sources") or {}).items())),
        "git commit": lambda p: f'{(p.get("git") or {}).get("commit")}'
        + (" (dirty)" if (p.get("git") or {}).get("dirty") else ""),
        "code fingerprint": lambda p: p.get("code_fingerprint"),
        "Slurm job": lambda p: p.get("slurm_job_id") or None,  # local runs: "—"
    }
    rows = []
    for name, get in fields.items():
        values = sorted({"—" if get(p) is None else str(get(p)) for p in provenance.values()})
        rows.append(f"<tr><th class='t'>{_esc(name)}</th><td>{'<br>'.join(_esc(v) for v in values)}</td></tr>")
    packages: dict[str, set[str]] = {}
    for p in provenance.values():
        for k, v in (p.get("packages") or {}).items():
            packages.setdefault(k, set()).add(str(v))
    rows.append("<tr><th class='t'>packages</th><td>" + ", ".join(
        f"{_esc(k)} {_esc(' / '.join(sorted(v)))}" for k, v in sorted(packages.items())) + "</td></tr>")
    return f'<table class="env">{"".join(rows)}</table>'


#: Above this many cells the report links per-cell power figures (lazy-loaded) and points
#: to per-cell provenance files instead of embedding them: embedded, 1,000 cells would make
#: a report of ~150 MB that no browser opens comfortably.
EMBED_CELL_LIMIT = 50


def _power_section(power_figures: dict[str, Path], link_base: Path | None) -> list[str]:
    parts = ["<h2>Power per cell</h2>", f"<p>{_esc(CAPTIONS['power'])}</p>"]
    linked = link_base is not None and len(power_figures) > EMBED_CELL_LIMIT
    if linked:
        parts.append(f"<p>{len(power_figures)} cells: figures are linked from "
                     f"<code>figures/power/</code> (next to this report), not embedded.</p>")
    for cell_id, path in sorted(power_figures.items()):
        if linked:
            src = Path(os.path.relpath(Path(path).resolve(), Path(link_base).resolve())).as_posix()
            image = f'<img alt="{_esc(cell_id)}" loading="lazy" src="{_esc(src)}">'
        else:
            image = _image(path)
        parts.append(f"<details><summary><code>{_esc(cell_id)}</code></summary>{image}</details>")
    return parts


def render(summary: pd.DataFrame, matrix: pd.DataFrame, figures: Iterable[Path],
           provenance: dict[str, dict[str, Any]], problems: list[str], title: str,
           power_figures: dict[str, Path] | None = None,
           link_base: Path | None = None, reference: pd.DataFrame | None = None,
           cell_dirs: dict[str, Path] | None = None, workers: int = 1) -> str:
    """The report as one HTML string. `link_base` is the directory the report is written
    to: with it, studies over EMBED_CELL_LIMIT cells link their per-cell figures.
    `reference`: rows to draw beside ours (the summary's columns plus `source`);
    `cell_dirs`: cell id → results folder, for the detail view (output lengths, power),
    read in `workers` processes."""
    parts = [f"<h1>{_esc(title)}</h1>",
             f"<p>Generated {datetime.now(UTC):%Y-%m-%d %H:%M UTC} by llm-energy. "
             f"{len(summary)} cell(s) measured, "
             f"{int((summary['status'] != 'ok').sum()) if len(summary) else 0} failed, "
             f"{int((matrix['status'] == 'pruned').sum()) if len(matrix) else 0} pruned.</p>",
             headline.section(summary)]
    sources = sorted({s for s in summary.get("energy_source", pd.Series(dtype=str)).dropna()})
    if any("estimate" in s for s in sources) or not sources:
        parts.append('<p class="warn"><b>Energy is estimated, not measured</b> for cells marked '
                     '"estimate": this machine has no energy sensor, so CPU energy is modelled '
                     'from utilisation × a configured per-core power. Use these numbers to compare '
                     'cells with each other, not as absolute joules.</p>')
    data = report_data.build(summary, reference, cell_dirs, workers) if len(summary) else None
    if data is not None:
        parts += [report_page.filters(data), report_page.CHARTS]
    parts.append("<h2>Configurations</h2>")
    parts.append("<p>Value over all cycles (ratios of sums: total energy ÷ total tokens, ...) "
                 "and, in parentheses, its 95% interval across cycles (Student t on the log scale "
                 "for positive quantities, so it never goes below zero); "
                 "latency percentiles also show a 95% bootstrap interval over requests in brackets. "
                 '<span class="badge measured">M</span> measured, <span class="badge estimate">E</span> '
                 "estimated (hover for the source). Click a column header to sort; the sliders hide "
                 "configurations over the ITL deadline or the energy budget. "
                 '<span class="badge pareto">frontier</span>: on the Pareto frontier of energy per '
                 "token against median ITL.</p>")
    if len(summary):
        pareto = set(pareto_cells(summary, "itl_ms_p50", "energy_per_output_token_j", True)) \
            if {"itl_ms_p50", "energy_per_output_token_j"} <= set(summary.columns) else set()
        fixed = report_data.axes(summary)[1]
        if fixed:
            first = summary.iloc[0]
            parts.append('<p id="fixed-axes">The same in every configuration (columns hidden; '
                         "tick <i>show settings that do not vary</i> to show them): " + ", ".join(
                             f"{_esc(c)}={_esc(report_data.fmt_setting(first[c]))}" for c in fixed)
                         + ".</p>")
        for model, group in summary.groupby("model", sort=True):
            parts.append(f"<h3>Model: {_esc(model)}</h3>")
            parts.append(_model_table(group, pareto, fixed))
    parts.append(recommend.report_section(summary))
    parts.append(report_section(reference, summary))
    parts.append("<h2>Figures (static, for papers)</h2>")
    parts += [_image(p, CAPTIONS.get(p.stem)) for p in figures]
    warnings = [(r["cell_id"], w) for _, r in summary.iterrows() for w in _as_list(r.get("warnings"))]
    if warnings:
        parts.append("<h2>Warnings</h2><ul>" + "".join(
            f"<li><code>{_esc(c)}</code>: {_esc(w)}</li>" for c, w in warnings) + "</ul>")
    failed = summary[summary["status"] != "ok"] if len(summary) else summary
    pruned = matrix[matrix["status"] == "pruned"] if len(matrix) else matrix
    parts.append('<h2 id="failed">Failed and pruned cells</h2>')
    if failed.empty and pruned.empty and not problems:
        parts.append("<p>None.</p>")
    parts += [f'<p class="failed">failed <code>{_esc(r["cell_id"])}</code> ({_esc(r["backend"])}): '
              f'{_esc(r.get("error"))}</p>' for _, r in failed.iterrows()]
    axis_cols = [c for c in pruned.columns
                 if c not in ("cell_id", "model", "backend", "status", "reason", "path")]
    parts += [f'<p class="pruned">pruned {_esc(r["model"])} / {_esc(r["backend"])} '
              f'({_esc(", ".join(f"{c}={r[c]}" for c in axis_cols if not _is_missing(r[c]) and r[c] != ""))}): '
              f'{_esc(r["reason"])}</p>' for _, r in pruned.iterrows()]
    parts += [f'<p class="failed">unreadable result: {_esc(p)}</p>' for p in problems]
    if power_figures:
        parts += _power_section(power_figures, link_base)
    parts.append("<h2>Environment and provenance</h2>")
    parts.append(_environment(provenance))
    if len(provenance) > EMBED_CELL_LIMIT:
        parts.append(f"<p>Full provenance of each of the {len(provenance)} cells: "
                     "<code>cells/&lt;model&gt;/&lt;backend&gt;/&lt;cell_id&gt;/provenance.json"
                     "</code> next to this report.</p>")
    for cell_id, prov in provenance.items() if len(provenance) <= EMBED_CELL_LIMIT else ():
        parts.append(f"<details><summary><code>{_esc(cell_id)}</code> on {_esc(prov.get('host'))} "
                     f"({_esc(prov.get('cpu_model'))})</summary><pre>"
                     f"{_esc(json.dumps(prov, indent=2, default=str))}</pre></details>")
    body = "\n".join(parts)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{report_page.template('report.css')}</style></head><body>{body}"
            f"{report_page.scripts(data) if data is not None else ''}</body></html>")


def read_provenance(paths: Iterable[str | Path]) -> dict[str, dict[str, Any]]:
    out = {}
    for path in paths:
        try:
            prov = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        out[prov.get("cell_config", {}).get("cell_id", Path(path).parent.name)] = prov
    return out
