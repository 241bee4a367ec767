"""`results/<study>/report.html`: one self-contained page (no network: figures embedded,
plotly.js inlined) that opens on the interactive views (`report_page`, data from
`report_data`: charts with hover, filters, the ITL-deadline and energy-budget sliders, the
Pareto frontier, a comparison and a per-cell detail), then the summary per model (headline
metrics first, sortable by any column, rows filtered by the same controls; drawn in the page
from the embedded data, a page of rows at a time: templates/table.js), a
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
from llm_energy.analysis.figures import CAPTIONS
from llm_energy.analysis.reference import report_section
from llm_energy.results import schema

# The report's table: the registry's columns with a `report` position, each with its label,
# decimals and basis: "energy" (the cell's energy source: measured or estimate), "timing"
# (measured with the host clock), "flops" (analytic FLOP count / measured time: an estimate).
TABLE_COLUMNS = tuple((c.name, c.display, c.digits, c.basis) for c in schema.report_columns())

def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _is_missing(value: Any) -> bool:
    try:
        return value is None or bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _as_list(value: Any) -> list[Any]:
    return [] if value is None or isinstance(value, float) else list(value)


def _image(path: Path, caption: str | None = None) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    img = f'<img alt="{_esc(path.stem)}" src="data:image/png;base64,{data}">'
    return f"<figure>{img}<figcaption>{_esc(caption)}</figcaption></figure>" if caption else img


#: A warning shared by more cells than this is listed once, its cells folded under it.
WARNING_CELLS_INLINE = 3


def _warnings(summary: pd.DataFrame) -> str:
    """Each cell's warnings; one shared by many cells (on a machine without an energy sensor,
    "energy is estimated" on all 10,000) once, with its count and the cells folded."""
    cells: dict[str, list[str]] = {}
    for row in summary[["cell_id", "warnings"]].to_dict("records"):
        for warning in _as_list(row["warnings"]):
            cells.setdefault(str(warning), []).append(str(row["cell_id"]))
    if not cells:
        return ""
    items = []
    for warning, ids in cells.items():
        if len(ids) <= WARNING_CELLS_INLINE:
            items += [f"<li><code>{_esc(c)}</code>: {_esc(warning)}</li>" for c in ids]
        else:
            items.append(f"<li>{_esc(warning)}: {len(ids)} cells <details><summary>which</summary>"
                         + " ".join(f"<code>{_esc(c)}</code>" for c in ids) + "</details></li>")
    return "<h2>Warnings</h2><ul>" + "".join(items) + "</ul>"


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
        fixed = data["table"]["fixed"]
        if fixed:
            first = summary.iloc[0]
            parts.append('<p id="fixed-axes">The same in every configuration (columns hidden; '
                         "tick <i>show settings that do not vary</i> to show them): " + ", ".join(
                             f"{_esc(c)}={_esc(report_data.fmt_setting(first[c]))}" for c in fixed)
                         + ".</p>")
        # One table per model, drawn in the page from the embedded data (templates/table.js,
        # paged): 10,000 static rows were ~20 MB of HTML and most of the page's load time.
        for model, _ in data["table"]["models"]:
            parts.append(f"<h3>Model: {_esc(model)}</h3>")
            parts.append(f'<div class="model-table" data-model="{_esc(model)}"></div>')
    parts.append(recommend.report_section(summary))
    parts.append(report_section(reference, summary))
    parts.append("<h2>Figures (static, for papers)</h2>")
    parts += [_image(p, CAPTIONS.get(p.stem)) for p in figures]
    if "warnings" in summary and len(summary):
        parts.append(_warnings(summary))
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
