"""The interactive part of the report: the filter bar, the Plotly charts (plotly.js inlined,
so the page works offline), the comparison and the per-cell detail, around the data of
`report_data`. The page's script and style are files in `templates/`."""

from __future__ import annotations

import functools
import html
from importlib import resources
from typing import Any

from llm_energy.analysis.report_data import numbers, to_script


@functools.lru_cache(maxsize=8)
def template(name: str) -> str:
    """A file of `analysis/templates/` (the page's CSS and JavaScript)."""
    return resources.files("llm_energy.analysis").joinpath("templates", name).read_text()


@functools.lru_cache(maxsize=1)
def plotly_js() -> str:
    """plotly.js, minified, from the `plotly` package (inlined: nothing is fetched)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _slider(cells: list[dict[str, Any]], metric: str) -> tuple[float, float]:
    """(min, max) covering every configuration with a value, so the default shows all; the
    slider is continuous (step "any"), so no rounding hides the largest."""
    values = [v for c in cells if (v := numbers(c, metric)[0]) is not None]
    if not values:
        return 0.0, 1.0
    return min(values) * 0.9, max(values) * 1.001


def filters(data: dict[str, Any]) -> str:
    """The sticky filter bar: facet checkboxes (filled in by the script), validity switches,
    the ITL deadline (percentile chosen) and the energy budget."""
    cells = data["cells"]
    i_low, i_high = _slider(cells, data["itl"]["50"])
    e_low, e_high = _slider(cells, data["energy"])
    options = "".join(f'<option value="{q}">p{q}</option>' for q in data["itl"])
    reference = any(c["source"] != "measured" for c in cells)
    switches = ('<label><input type="checkbox" id="show-flagged" checked> flagged cells</label>'
                '<label><input type="checkbox" id="show-unstable" checked> unstable cells '
                "(leaderboard rule)</label>"
                '<label><input type="checkbox" id="show-fixed"> show settings that do not vary'
                "</label>")
    if reference:
        switches += '<label><input type="checkbox" id="show-reference" checked> reference rows</label>'
    energy = data["metrics"][data["energy"]]
    return (f'<div id="filters"><div id="facet-filters"></div><div>{switches}</div>'
            f'<label>ITL deadline: <select id="itl-percentile">{options}</select> '
            f'≤ <input type="range" id="itl-deadline" min="{i_low:.6g}" max="{i_high!r}" '
            f'step="any" value="{i_high!r}"> <output id="itl-deadline-value"></output> ms</label>'
            f'<label>Energy budget ≤ <input type="range" id="energy-budget" min="{e_low:.6g}" '
            f'max="{e_high!r}" step="any" value="{e_high!r}"> <output id="energy-budget-value">'
            f'</output> {html.escape(energy["label"])}</label><span id="shown-count"></span></div>')


CHARTS = (
    "<h2>Energy against throughput and latency</h2>"
    "<p>One point per configuration (hover for its settings, numbers with their 95% intervals "
    "and flags; click to pick it for the comparison and open its detail). Dotted lines: the "
    "Pareto frontier per model. Open markers: outside the ITL deadline or the energy budget; "
    "per model, a ringed star marks the lowest energy per token within both (move the "
    "deadline to see the cheapest it allows) and a ringed triangle the highest throughput "
    "within both (move the budget to see the fastest it affords), as ★ and ▲ in the table; "
    "diamonds: reference data.</p>"
    '<div class="charts"><div id="chart-throughput" class="chart"></div>'
    '<div id="chart-latency" class="chart"></div></div>'
    '<h2>Comparison</h2><div id="compare"></div>'
    '<div id="detail" hidden><h2>Cell detail</h2><p id="detail-title"></p><p id="detail-flags">'
    '</p><div class="plots"><div id="detail-hist" class="plot"></div>'
    '<div id="detail-power" class="plot"></div></div></div>')


def scripts(data: dict[str, Any]) -> str:
    """The embedded data, plotly.js and the page's own script (after the tables). The cells'
    details (power over time, output lengths: most of the data at 10,000 cells) are a JSON
    element of their own, parsed when a detail is first opened, not when the page loads."""
    rest = {k: v for k, v in data.items() if k != "details"}
    return (f'<script type="application/json" id="report-data">{to_script(rest)}</script>'
            f'<script type="application/json" id="report-details">'
            f'{to_script(data.get("details") or {})}</script>'
            f"<script>{plotly_js()}</script><script>{template('table.js')}</script>"
            f"<script>{template('interactive.js')}</script>")
