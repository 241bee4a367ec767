"""The interactive report with more series than a legend can name (many models): the
points are one trace coloured per series, the frontiers one line; hover, filters and the
sliders' marks work as with one trace per series (real headless Chromium)."""

from __future__ import annotations

import time

import pandas as pd
from test_report_browser import (  # noqa: F401
    REFERENCE_ROW,
    _best,
    _points,
    _row,
    browser,
    needs_chromium,
    study_frames,
)

from llm_energy.analysis.report import render

MODELS, PER_MODEL = 20, 3


def _cell(j: int, k: int) -> str:
    return f"c{j:02d}{k:09d}"


def _report(tmp_path):
    # Per model: energy grows with k (k=0 the cheapest), throughput too (k=2 the fastest).
    rows = [_row(_cell(j, k), 2 ** k, 0.1 + 0.01 * k + 0.001 * j, 5.0 + k, 100.0 + 10 * k + j,
                 model=f"m{j:02d}") for j in range(MODELS) for k in range(PER_MODEL)]
    path = tmp_path / "series.html"
    path.write_text(render(pd.DataFrame(rows), pd.DataFrame(), [], {}, [], "series"))
    return path


def _trace_colours(chrome, chart: str) -> dict[str, str]:
    return chrome.eval(f"""(function(){{var out={{}};document.getElementById('{chart}').data
        .forEach(function(t){{(t.customdata||[]).forEach(function(id,k){{out[id]=t.marker.color[k];}});}});
        return out;}})()""")


@needs_chromium
def test_many_series_are_one_trace_and_still_hover_filter_and_mark(browser, tmp_path):  # noqa: F811
    browser.send("Runtime.enable", session=True)
    browser.open(_report(tmp_path))
    assert not [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"]
    every = {_cell(j, k) for j in range(MODELS) for k in range(PER_MODEL)}
    for chart in ("chart-throughput", "chart-latency"):
        traces = browser.eval(f"document.getElementById('{chart}').data.map(function(t){{"
                              "return [t.name,t.mode,(t.customdata||[]).length];})")
        points = [t for t in traces if t[2]]
        assert len(points) == 1 and points[0][2] == MODELS * PER_MODEL, traces
        assert len([t for t in traces if t[1] == "lines"]) == 1, traces
    points = _points(browser, "chart-throughput")
    assert set(points) == every
    # One colour per model, different between neighbouring models.
    colours = _trace_colours(browser, "chart-throughput")
    assert len({colours[_cell(3, k)] for k in range(PER_MODEL)}) == 1
    assert colours[_cell(3, 0)] != colours[_cell(4, 0)]
    # The sliders' marks: per model the cheapest (k=0) and the fastest (k=2).
    best = _best(browser, "chart-throughput")
    assert best["lowest J/token within the limits"] == sorted(_cell(j, 0) for j in range(MODELS))
    assert best["fastest within the limits"] == sorted(_cell(j, 2) for j in range(MODELS))

    # Hover over model m07's cheapest point with the mouse: the configuration is named.
    p = points[_cell(7, 0)]
    box = browser.eval(f"""(function(){{var e=document.getElementById('chart-throughput');
        e.scrollIntoView({{block:'center'}});
        var pt=e.querySelectorAll('.scatterlayer .trace')[{p['trace']}].querySelectorAll('path.point')[{p['index']}];
        var r=pt.getBoundingClientRect();return {{x:r.left+r.width/2,y:r.top+r.height/2}};}})()""")
    text = ""
    for _ in range(20):
        browser.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": box["x"], "y": box["y"]},
                     session=True)
        time.sleep(0.1)
        text = browser.eval("(document.querySelector('#chart-throughput .hoverlayer')||{}).textContent||''")
        if text:
            break
    assert _cell(7, 0) in text and "m07" in text and "batch_size=1" in text

    # Untick m07: exactly its three points and its marks go; the others keep their colours.
    browser.click('input[data-facet="model"][value="m07"]')
    after = _points(browser, "chart-throughput")
    assert set(after) == every - {_cell(7, k) for k in range(PER_MODEL)}
    assert all(_trace_colours(browser, "chart-throughput")[c] == colours[c] for c in after)
    best = _best(browser, "chart-throughput")
    assert best["lowest J/token within the limits"] == sorted(_cell(j, 0) for j in range(MODELS) if j != 7)
    # The energy budget below model m05's cheapest: m00..m04 keep their marks, the rest lose them.
    browser.eval("var e=document.getElementById('energy-budget');e.value='0.1045';"
                 "e.dispatchEvent(new Event('input'))")
    best = _best(browser, "chart-throughput")
    assert best["lowest J/token within the limits"] == sorted(_cell(j, 0) for j in range(5))
    symbols = {c: p["symbol"] for c, p in _points(browser, "chart-throughput").items()}
    assert symbols[_cell(4, 0)] == "circle" and symbols[_cell(5, 0)] == "circle-open"


@needs_chromium
def test_the_page_formats_numbers_and_hover_from_the_records(browser, tmp_path):  # noqa: F811
    """The records carry numbers only; the page writes them with the registry's decimals
    and the hover from them, names escaped (a model name cannot become markup)."""
    summary, reference = study_frames()
    summary.loc[0, "model"] = "m1</script><script>alert(1)</script>"
    path = tmp_path / "format.html"
    path.write_text(render(summary, pd.DataFrame(), [], {}, [], "format", reference=reference))
    browser.send("Runtime.enable", session=True)
    browser.open(path)
    assert not [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"]

    def text(cell: str, metric: str) -> str:
        return browser.eval(f"llmEnergyReport.text('{cell}','{metric}')")

    # 0.2 J/token with its interval ±10%, 4 decimals (the registry's digits for J/token).
    assert text("aaaaaaaaaaa3", "energy_per_output_token_j") == "0.2000 (0.1800–0.2200)"
    assert text("aaaaaaaaaaa3", "output_tokens_per_s") == "300.0"       # 1 decimal, no interval
    assert text("bbbbbbbbbbb1", "energy_per_output_token_j") == "0.9000"  # 1 cycle: no interval
    assert text("ccccccccccc1", "energy_per_output_token_j") == "—"       # failed: no value
    hover = browser.eval("llmEnergyReport.hover('aaaaaaaaaaa4')")
    assert "<b>m1</b> · transformers · test CPU" in hover and "batch_size=8" in hover
    assert "J/token: 0.2500 (0.2250–0.2750)" in hover
    assert "leaderboard rule: unstable (" in hover and "; flags: none" in hover
    assert "m1&lt;/script&gt;&lt;script&gt;alert(1)" in browser.eval("llmEnergyReport.hover('aaaaaaaaaaa1')")
    assert browser.eval("llmEnergyReport.hover('ccccccccccc1')") == ""  # failed: not drawn
    ref = browser.eval(f"llmEnergyReport.hover('{REFERENCE_ROW[0]}')")
    assert f"reference: ML.ENERGY test · row {REFERENCE_ROW[0]}" in ref and "J/token: 0.1500" in ref
