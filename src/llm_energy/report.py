"""`results/report.html`: one self-contained page (figures embedded, no network) with the
summary per model, measured-vs-estimated badges, failed and pruned cells, and provenance."""

from __future__ import annotations

import base64
import html
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

TABLE_COLUMNS = (
    ("energy_per_output_token_j", "J/token", 4), ("output_tokens_per_s", "tokens/s", 1),
    ("itl_ms_p50", "ITL p50 (ms)", 2), ("ttft_ms_p50", "TTFT p50 (ms)", 1),
    ("e2e_ms_p50", "E2E p50 (ms)", 1), ("avg_power_w", "power (W)", 2),
    ("idle_power_w", "idle (W)", 2), ("energy_per_request_j", "J/request", 3),
    ("achieved_tflops", "TFLOP/s", 4),
)

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:80em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .5em;text-align:right}
th{background:#f3f3f3;cursor:pointer;user-select:none}
td.t,th.t{text-align:left}
.badge{display:inline-block;font-size:.75em;padding:0 .4em;border-radius:.6em;margin-left:.3em}
.measured{background:#d8f0dc;color:#145a22}.estimate{background:#fde7c7;color:#7a4500}
.failed{color:#a00}.warn{color:#7a4500;font-size:.85em}
img{max-width:46em;display:block;margin:1em 0}
details{margin:.5em 0}pre{background:#f7f7f7;padding:.5em;overflow:auto;font-size:.8em}
"""

_JS = """
document.querySelectorAll('table.sortable th').forEach(function(th){
  th.addEventListener('click',function(){
    var table=th.closest('table'),body=table.tBodies[0],i=th.cellIndex;
    var asc=th.dataset.order!=='asc';
    table.querySelectorAll('th').forEach(function(h){delete h.dataset.order;});
    th.dataset.order=asc?'asc':'desc';
    var rows=Array.from(body.rows);
    rows.sort(function(a,b){
      var x=a.cells[i].dataset.v,y=b.cells[i].dataset.v;
      var nx=parseFloat(x),ny=parseFloat(y);
      var c=(isNaN(nx)||isNaN(ny))?String(x).localeCompare(String(y)):nx-ny;
      return asc?c:-c;});
    rows.forEach(function(r){body.appendChild(r);});
  });
});
"""


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(value: Any, digits: int, low: Any = None, high: Any = None) -> str:
    if _is_missing(value):
        return '<td data-v="">n/a</td>'
    text = f"{value:.{digits}f}"
    if not _is_missing(low) and not _is_missing(high):
        text += f' <span class="warn">± {(high - low) / 2:.{digits}f}</span>'
    return f'<td data-v="{value}">{text}</td>'


def _as_list(value: Any) -> list[Any]:
    return [] if value is None or isinstance(value, float) else list(value)


def _source_badge(source: Any) -> str:
    if _is_missing(source) or not source:
        return '<span class="badge estimate">no energy sensor</span>'
    kind = "estimate" if "estimate" in str(source) else "measured"
    return f'<span class="badge {kind}">{kind}: {_esc(source)}</span>'


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{_esc(path.stem)}" src="data:image/png;base64,{data}">'


def _settings_columns(summary: pd.DataFrame) -> list[str]:
    fixed = {"cell_id", "model", "backend", "device", "device_name", "status", "error", "cycles",
             "energy_source", "warnings", "output_tokens", "requests", "flops_per_token"}
    return [c for c in summary.columns
            if c not in fixed and not c.endswith(("_std", "_ci95_low", "_ci95_high"))
            and c not in {m for m, _, _ in TABLE_COLUMNS} and summary[c].notna().any()
            and c not in ("total_energy_j", "net_energy_j", "duration_s", "steady_state_energy_j",
                          "ttft_ms_p90", "itl_ms_p90", "itl_ms_p95", "itl_ms_p99", "tpot_ms_p50",
                          "e2e_ms_p90", "mfu", "peak_memory_mb")]


def _model_table(summary: pd.DataFrame) -> str:
    settings = _settings_columns(summary)
    head = "".join(f'<th class="t">{_esc(c)}</th>' for c in ["backend", *settings]) + \
        "".join(f"<th>{_esc(label)}</th>" for _, label, _ in TABLE_COLUMNS) + \
        '<th class="t">cycles</th><th class="t">energy</th><th class="t">cell</th>'
    rows = []
    for _, r in summary.iterrows():
        cells = [f'<td class="t" data-v="{_esc(r["backend"])}">{_esc(r["backend"])}</td>']
        cells += [f'<td class="t" data-v="{_esc(r.get(c))}">{_esc(r.get(c))}</td>' for c in settings]
        if r["status"] != "ok":
            cells.append(f'<td class="t failed" colspan="{len(TABLE_COLUMNS) + 2}">failed: '
                         f'{_esc(r.get("error"))}</td>')
        else:
            cells += [_number(r.get(m), d, r.get(f"{m}_ci95_low"), r.get(f"{m}_ci95_high"))
                      for m, _, d in TABLE_COLUMNS]
            note = "" if r["cycles"] >= 2 else ' <span class="warn">(1 cycle: no interval)</span>'
            cells.append(f'<td class="t" data-v="{r["cycles"]}">{r["cycles"]}{note}</td>')
            cells.append(f'<td class="t" data-v="{_esc(r.get("energy_source"))}">'
                         f'{_source_badge(r.get("energy_source"))}</td>')
        cells.append(f'<td class="t" data-v="{_esc(r["cell_id"])}"><code>{_esc(r["cell_id"])}</code></td>')
        rows.append(f'<tr data-cell="{_esc(r["cell_id"])}">{"".join(cells)}</tr>')
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def render(summary: pd.DataFrame, matrix: pd.DataFrame, figures: Iterable[Path],
           provenance: dict[str, dict[str, Any]], problems: list[str], title: str) -> str:
    parts = [f"<h1>{_esc(title)}</h1>",
             f"<p>Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by llm-energy. "
             f"{len(summary)} cell(s) measured, "
             f"{int((summary['status'] != 'ok').sum()) if len(summary) else 0} failed, "
             f"{int((matrix['status'] == 'pruned').sum()) if len(matrix) else 0} pruned.</p>"]
    sources = sorted({s for s in summary.get("energy_source", pd.Series(dtype=str)).dropna()})
    if any("estimate" in s for s in sources) or not sources:
        parts.append('<p class="warn"><b>Energy is estimated, not measured</b> for cells marked '
                     '"estimate": this machine has no energy sensor, so CPU energy is modelled '
                     'from utilisation × a configured per-core power. Use these numbers to compare '
                     'cells with each other, not as absolute joules.</p>')
    parts.append("<h2>Figures</h2>")
    parts += [_image(p) for p in figures]
    for model, group in summary.groupby("model", sort=True):
        parts.append(f"<h2>Model: {_esc(model)}</h2>")
        parts.append("<p>Mean across cycles ± half-width of the 95% confidence interval "
                     "(Student t). Click a column header to sort.</p>")
        parts.append(_model_table(group))
    warnings = [(r["cell_id"], w) for _, r in summary.iterrows() for w in _as_list(r.get("warnings"))]
    if warnings:
        parts.append("<h2>Warnings</h2><ul>" + "".join(
            f"<li><code>{_esc(c)}</code>: {_esc(w)}</li>" for c, w in warnings) + "</ul>")
    failed = summary[summary["status"] != "ok"] if len(summary) else summary
    pruned = matrix[matrix["status"] == "pruned"] if len(matrix) else matrix
    parts.append("<h2>Failed and pruned cells</h2>")
    if failed.empty and pruned.empty and not problems:
        parts.append("<p>None.</p>")
    parts += [f'<p class="failed">failed <code>{_esc(r["cell_id"])}</code> ({_esc(r["backend"])}): '
              f'{_esc(r.get("error"))}</p>' for _, r in failed.iterrows()]
    axis_cols = [c for c in pruned.columns
                 if c not in ("cell_id", "model", "backend", "status", "reason", "path")]
    parts += [f'<p>pruned {_esc(r["model"])} / {_esc(r["backend"])} '
              f'({_esc(", ".join(f"{c}={r[c]}" for c in axis_cols if not _is_missing(r[c]) and r[c] != ""))}): '
              f'{_esc(r["reason"])}</p>' for _, r in pruned.iterrows()]
    parts += [f'<p class="failed">unreadable result: {_esc(p)}</p>' for p in problems]
    parts.append("<h2>Environment and provenance</h2>")
    for cell_id, prov in provenance.items():
        parts.append(f"<details><summary><code>{_esc(cell_id)}</code> on {_esc(prov.get('host'))} "
                     f"({_esc(prov.get('cpu_model'))})</summary><pre>"
                     f"{_esc(json.dumps(prov, indent=2, default=str))}</pre></details>")
    body = "\n".join(parts)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{_CSS}</style></head><body>{body}<script>{_JS}</script></body></html>")


def read_provenance(paths: Iterable[str | Path]) -> dict[str, dict[str, Any]]:
    out = {}
    for path in paths:
        try:
            prov = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        out[prov.get("cell_config", {}).get("cell_id", Path(path).parent.name)] = prov
    return out
