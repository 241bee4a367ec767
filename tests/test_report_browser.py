"""The HTML report in a real browser (the screenshot in docs/report-interactive.png comes from
`test_interactive_report_offline` with REPORT_SCREENSHOT=<path>): headless Chromium (Debian's `chromium`), driven over
the Chrome DevTools Protocol on a pipe (`--remote-debugging-pipe`: no port, no websocket
library). Loads the file, clicks a column header and checks the order, moves the
ITL-deadline slider with the mouse and checks rows disappear, takes a screenshot."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llm_energy.analysis.report import EMBED_CELL_LIMIT, TABLE_COLUMNS, render

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium)")


class Chromium:
    """A headless Chromium with one page, spoken to over CDP on fds 3 (in) and 4 (out)."""

    def __init__(self, profile_dir: Path, width: int = 1400, height: int = 1000) -> None:
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()

        def child() -> None:
            # Move both ends above 4 first, so dup2 onto 3/4 cannot clobber either.
            a = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             f"--user-data-dir={profile_dir}", "--remote-debugging-pipe",
             f"--window-size={width},{height}", "about:blank"],
            preexec_fn=child, close_fds=False, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._out, self._in = to_chrome_w, from_chrome_r
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget",
                                 {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable", session=True)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                  session=True)

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: bool = False,
             timeout: float = 30.0) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read_message(deadline))

    def open(self, path: Path) -> None:
        self.events.clear()
        self.send("Page.navigate", {"url": path.resolve().as_uri()}, session=True)
        self.wait_event("Page.loadEventFired")

    def eval(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                           session=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click_at(self, x: float, y: float) -> None:
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left",
                                                   "clickCount": 1}, session=True)

    def rect(self, selector: str) -> dict:
        """Scrolls the element to the middle of the viewport; its box in viewport pixels."""
        return self.eval(f"""(function(){{var e=document.querySelector({json.dumps(selector)});
            e.scrollIntoView({{block:'center'}});var r=e.getBoundingClientRect();
            return {{x:r.left,y:r.top,w:r.width,h:r.height}};}})()""")

    def click(self, selector: str) -> None:
        r = self.rect(selector)
        self.click_at(r["x"] + r["w"] / 2, r["y"] + r["h"] / 2)

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        params = {"format": "png", "captureBeyondViewport": full_page}
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", params, session=True,
                                                    timeout=60)["data"]))
        return path

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:  # the browser may already be gone
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._out)
        os.close(self._in)


@pytest.fixture
def browser(tmp_path):
    chrome = Chromium(tmp_path / "profile")
    yield chrome
    chrome.close()


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# ----------------------------------------------------------------- a small hand-made study

def _row(cell_id, batch, energy, itl, tps, model="m1", status="ok", cycles=3):
    row = {"cell_id": cell_id, "model": model, "backend": "transformers", "batch_size": batch,
           "dtype": "float32", "device": "cpu", "device_name": "test CPU", "status": status,
           "error": None if status == "ok" else "RuntimeError: out of memory",
           "cycles": cycles if status == "ok" else 0, "energy_source": "estimate",
           "warnings": [], "energy_per_output_token_j": energy, "itl_ms_p50": itl,
           "itl_ms_p90": None if itl is None else itl * 1.5, "itl_ms_p95": None if itl is None else itl * 2,
           "itl_ms_p99": None if itl is None else itl * 3, "output_tokens_per_s": tps,
           "ttft_ms_p50": 10.0, "e2e_ms_p50": 100.0, "avg_power_w": 20.0, "idle_power_w": 5.0,
           "energy_per_request_j": None if energy is None else energy * 8, "avg_batch_size": batch,
           "achieved_tflops": 0.001}
    if energy is not None and cycles >= 2:
        row["energy_per_output_token_j_ci95_low"] = energy * 0.9
        row["energy_per_output_token_j_ci95_high"] = energy * 1.1
    row["ci_note"] = None if cycles >= 2 else "fewer than 2 cycles: no confidence interval"
    return row


ROWS = [  # (cell, batch, J/token, ITL p50 ms, tokens/s)
    ("aaaaaaaaaaa1", 1, 0.50, 2.0, 100.0),
    ("aaaaaaaaaaa2", 2, 0.30, 4.0, 180.0),
    ("aaaaaaaaaaa3", 4, 0.20, 8.0, 300.0),
    ("aaaaaaaaaaa4", 8, 0.25, 16.0, 320.0),
]


@pytest.fixture
def report_file(tmp_path) -> Path:
    summary = pd.DataFrame([_row(*r) for r in ROWS]
                           + [_row("bbbbbbbbbbb1", 1, 0.9, 3.0, 50.0, model="m2", cycles=1),
                              _row("ccccccccccc1", 16, None, None, None, status="failed")])
    matrix = pd.DataFrame([{"cell_id": "ddddddddddd1", "model": "m1", "backend": "vllm",
                            "batch_size": 4, "dtype": "float32", "status": "pruned",
                            "reason": "vllm: environment missing", "path": ""}])
    html = render(summary, matrix, [], {}, ["cells/x/runs.parquet: ArrowInvalid: truncated"], "test study")
    path = tmp_path / "report.html"
    path.write_text(html)
    return path


def _column_values(chrome: Chromium, table: int, header: str) -> list[str]:
    return chrome.eval(f"""(function(){{var t=document.querySelectorAll('table.sortable')[{table}];
        var i=Array.from(t.tHead.rows[0].cells).findIndex(function(c){{return c.textContent=={json.dumps(header)};}});
        return Array.from(t.tBodies[0].rows).map(function(r){{return r.cells[i].dataset.v;}});}})()""")


def column_position(chrome: Chromium, header: str, table: int = 0) -> int:
    """1-based position of the column headed `header` (for `th:nth-child`)."""
    return 1 + chrome.eval(f"""Array.from(document.querySelectorAll('table.sortable')[{table}]
        .tHead.rows[0].cells).findIndex(function(c){{return c.textContent=={json.dumps(header)};}})""")


def _visible_cells(chrome: Chromium) -> list[str]:
    return chrome.eval("""Array.from(document.querySelectorAll('table.sortable tbody tr'))
        .filter(function(r){return r.offsetParent!==null;}).map(function(r){return r.dataset.cell;})""")


@needs_chromium
def test_report_sorts_filters_and_renders(browser, report_file, tmp_path):
    browser.open(report_file)
    assert browser.eval("document.title") == "test study"
    # Self-contained: the page fetched nothing.
    assert browser.eval("performance.getEntriesByType('resource').length") == 0
    assert browser.eval("document.querySelectorAll('table.sortable').length") == 2  # one per model

    # Sort model m1's table by J/token: ascending, then descending; the failed row (no
    # value) stays last both ways.
    energies = [r[2] for r in ROWS]
    # Headline metrics first, before the settings, and on screen at 1400 px.
    headers = browser.eval("Array.from(document.querySelector('table.sortable').tHead.rows[0]"
                           ".cells).map(function(c){return c.textContent;})")
    labels = [label for _, label, _, _ in TABLE_COLUMNS]
    assert headers[:1 + len(labels)] == ["backend", *labels]
    assert headers.index("J/token") < headers.index("batch_size")
    browser.eval("window.scrollTo(0, 0)")
    assert browser.eval("document.querySelector('table.sortable').tHead.rows[0]"
                        f".cells[{len(labels) // 2}].getBoundingClientRect().right") <= 1400
    j_token = column_position(browser, "J/token")
    browser.click(f"table.sortable th:nth-child({j_token})")
    values = _column_values(browser, 0, "J/token")
    assert [float(v) for v in values[:-1]] == sorted(energies) and values[-1] == ""
    browser.click(f"table.sortable th:nth-child({j_token})")
    values = _column_values(browser, 0, "J/token")
    assert [float(v) for v in values[:-1]] == sorted(energies, reverse=True) and values[-1] == ""
    # Numbers sort as numbers (16 after 8), text as text.
    browser.click(f"table.sortable th:nth-child({column_position(browser, 'batch_size')})")
    assert [int(v) for v in _column_values(browser, 0, "batch_size")] == [1, 2, 4, 8, 16]

    # All configurations are shown before the filters move.
    assert len(_visible_cells(browser)) == 6
    # Click the ITL-deadline slider about a fifth of the way along (≈ 5 ms): only cells
    # whose median ITL is within the new deadline stay; failed cells (no numbers) stay listed.
    low, high = (float(browser.eval(f"document.getElementById('itl-deadline').{a}")) for a in ("min", "max"))
    box = browser.rect("#itl-deadline")
    browser.click_at(box["x"] + box["w"] * (5.0 - low) / (high - low), box["y"] + box["h"] / 2)
    deadline = float(browser.eval("document.getElementById('itl-deadline').value"))
    assert 4.0 <= deadline < 8.0, deadline
    expected = {r[0] for r in ROWS if r[3] <= deadline} | {"bbbbbbbbbbb1", "ccccccccccc1"}
    assert set(_visible_cells(browser)) == expected  # the 8 and 16 ms cells disappeared
    shown = browser.eval("document.getElementById('shown-count').textContent")
    assert shown == f"{len(expected) - 1} of 5 configurations shown"

    # Back to the right end; then an energy budget of 0.26 J/token (set as a script would:
    # the value plus the input event the slider fires).
    box = browser.rect("#itl-deadline")
    browser.click_at(box["x"] + box["w"] - 1, box["y"] + box["h"] / 2)
    assert len(_visible_cells(browser)) == 6
    browser.eval("var e=document.getElementById('energy-budget');e.value='0.26';"
                 "e.dispatchEvent(new Event('input'))")
    budget = float(browser.eval("document.getElementById('energy-budget').value"))
    expected = {r[0] for r in ROWS if r[2] <= budget} | {"ccccccccccc1"}
    assert set(_visible_cells(browser)) == expected and len(expected) == 3  # m2's 0.9 J hidden

    # Switching the deadline to p95 resets the slider to cover every cell.
    browser.eval("var s=document.getElementById('itl-percentile');s.value='95';"
                 "s.dispatchEvent(new Event('change'))")
    assert float(browser.eval("document.getElementById('itl-deadline').max")) >= 16.0 * 2

    text = browser.eval("document.body.textContent")
    assert "fewer than 2 cycles" in text          # m2 has one cycle: no interval
    assert "vllm: environment missing" in text    # pruned with its reason
    assert "out of memory" in text                # failed with its error
    assert "ArrowInvalid" in text                 # unreadable file listed
    assert browser.eval("document.querySelectorAll('.badge.estimate').length") > 10
    assert browser.eval("document.querySelectorAll('.badge.pareto').length") >= 1

    shot = browser.screenshot(tmp_path / "report.png")
    width, height = png_size(shot)
    assert 1000 <= width <= 1400 and height >= 500
    assert shot.stat().st_size > 10_000


@pytest.mark.parametrize("n_cells", [3, EMBED_CELL_LIMIT + 1])
def test_large_studies_link_per_cell_figures_instead_of_embedding_them(tmp_path, n_cells):
    """Embedded, every cell's power figure and provenance makes a 1,000-cell report ~150 MB;
    past EMBED_CELL_LIMIT they are linked relative to the report and must resolve."""
    import re

    results = tmp_path / "results"
    (results / "figures" / "power").mkdir(parents=True)
    png = (b"\x89PNG\r\n\x1a\n" + b"\x00" * 2000)
    power = {}
    for k in range(n_cells):
        power[f"cell{k:08d}"] = results / "figures" / "power" / f"cell{k:08d}.png"
        power[f"cell{k:08d}"].write_bytes(png)
    provenance = {cell: {"host": "h", "cpu_model": "c", "note": "x" * 2000} for cell in power}
    summary = pd.DataFrame([_row(*r) for r in ROWS])
    html = render(summary, pd.DataFrame(), [], provenance, [], "big",
                  power_figures=power, link_base=results)
    # The page's scripts (plotly.js, ~4.7 MB, the same for every study) come after the body.
    html = html.split('<script type="application/json" id="report-data">')[0]
    sources = re.findall(r'<img alt="cell\d+"[^>]* src="([^"]+)"', html)
    assert len(sources) == n_cells
    if n_cells <= EMBED_CELL_LIMIT:
        assert all(s.startswith("data:image/png;base64,") for s in sources)
        assert html.count("x" * 2000) == n_cells
    else:
        assert all((results / s).is_file() and s.startswith("figures/power/") for s in sources)
        assert 'loading="lazy"' in html and "data:image/png" not in html
        assert "x" * 2000 not in html and f"each of the {n_cells} cells" in html
        assert len(html) < 200 * n_cells + 20_000


# ------------------------------------------------ the interactive views (Plotly, offline)

#: Output lengths of each cell's successful requests (one more request failed in each).
LENGTHS = {"aaaaaaaaaaa1": [10, 12, 12, 30, 31, 32, 32, 32], "aaaaaaaaaaa3": [16, 16, 17, 40]}
REFERENCE_ROW = ("rrrrrrrrrrr1", 4, 0.15, 6.0, 400.0)


def write_cell(cell_dir: Path, lengths: list[int], n_samples: int = 50) -> None:
    """A cell's requests (one failed), power samples (two phases) and one cycle with its
    steady window, as the measure rule writes them."""
    cell_dir.mkdir(parents=True)
    pd.DataFrame({"cell_id": cell_dir.name, "cycle": 0, "output_tokens": [*lengths, 999],
                  "success": [True] * len(lengths) + [False]}).to_parquet(cell_dir / "requests.parquet")
    pd.DataFrame({"cell_id": cell_dir.name, "t_s": [0.5 * k for k in range(n_samples)],
                  "device": "cpu", "power_w": [10.0 + k % 7 for k in range(n_samples)],
                  "power_source": "estimate",
                  "phase": ["idle"] * (n_samples // 2) + ["cycle0"] * (n_samples - n_samples // 2)}
                 ).to_parquet(cell_dir / "timeseries.parquet")
    pd.DataFrame([{"cell_id": cell_dir.name, "cycle": 0, "status": "ok", "cycle_start_s": 12.5,
                   "duration_s": 10.0, "steady_state_start_s": 2.0, "steady_state_end_s": 8.0}]
                 ).to_parquet(cell_dir / "runs.parquet")


def study_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The hand-made summary and one reference row (the summary's columns plus `source`)."""
    summary = pd.DataFrame([_row(*r) for r in ROWS]
                           + [_row("bbbbbbbbbbb1", 1, 0.9, 3.0, 50.0, model="m2", cycles=1),
                              _row("ccccccccccc1", 16, None, None, None, status="failed")])
    summary["warnings"] = [[], ["contention: other processes used 2.0 CPU cores"], [], [], [], []]
    reference = pd.DataFrame([{**_row(*REFERENCE_ROW), "source": "reference: ML.ENERGY test"}])
    return summary, reference


@pytest.fixture
def interactive_report(tmp_path) -> Path:
    summary, reference = study_frames()
    cell_dirs = {}
    for cell_id, lengths in LENGTHS.items():
        cell_dirs[cell_id] = tmp_path / "cells" / cell_id
        write_cell(cell_dirs[cell_id], lengths)
    path = tmp_path / "interactive.html"
    path.write_text(render(summary, pd.DataFrame(), [], {}, [], "interactive", reference=reference,
                           cell_dirs=cell_dirs))
    return path


def _points(chrome: Chromium, chart: str) -> dict[str, dict]:
    """Cell id → {symbol, trace, index} of every point drawn in a chart (from Plotly's data)."""
    return chrome.eval(f"""(function(){{var gd=document.getElementById('{chart}'),out={{}};
        gd.data.forEach(function(t,i){{(t.customdata||[]).forEach(function(id,k){{
            out[id]={{symbol:t.marker.symbol[k],trace:i,index:k}};}});}});return out;}})()""")


def _drawn(chrome: Chromium, chart: str) -> int:
    """SVG points drawn for configurations (the marks of the best cells left out)."""
    return chrome.eval(f"""(function(){{var gd=document.getElementById('{chart}');
        var traces=gd.querySelectorAll('.scatterlayer .trace'),n=0;
        gd.data.forEach(function(t,i){{if(t.customdata)n+=traces[i].querySelectorAll('path.point').length;}});
        return n;}})()""")


def _best(chrome: Chromium, chart: str) -> dict[str, list[str]]:
    """The cells marked in a chart (trace name → cell ids) and in the tables (class → ids)."""
    return chrome.eval(f"""(function(){{var out={{}};
        document.getElementById('{chart}').data.forEach(function(t){{if(t.ids)out[t.name]=t.ids.slice().sort();}});
        ['best-energy','best-speed'].forEach(function(k){{out[k]=Array.from(document.querySelectorAll(
            'table.sortable tr.'+k)).map(function(r){{return r.dataset.cell;}}).sort();}});
        return out;}})()""")


def _marked(points: dict[str, dict]) -> set[str]:
    return {cell for cell, p in points.items() if not p["symbol"].endswith("-open")}


def _visible_rows(chrome: Chromium) -> set[str]:
    return set(_visible_cells(chrome))


@needs_chromium
def test_interactive_report_offline(browser, interactive_report, tmp_path):
    """Offline (network emulated off): no console error; hover names the configuration with
    its numbers; a filter removes points and rows; the sliders change which points are
    marked; two picked cells are compared; the detail shows the output-length histogram."""
    for domain in ("Runtime", "Log", "Network"):
        browser.send(f"{domain}.enable", session=True)
    browser.send("Network.emulateNetworkConditions", {"offline": True, "latency": 0,
                 "downloadThroughput": -1, "uploadThroughput": -1}, session=True)
    started = time.monotonic()
    browser.open(interactive_report)
    load_s = time.monotonic() - started
    assert browser.eval("typeof Plotly") == "object" and load_s < 20
    assert browser.eval("performance.getEntriesByType('resource').length") == 0
    errors = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    assert errors == []

    # Every successful cell and the reference row drawn, all marked at the default sliders.
    measured = {r[0] for r in ROWS} | {"bbbbbbbbbbb1"}
    points = _points(browser, "chart-throughput")
    assert set(points) == measured | {REFERENCE_ROW[0]}
    assert _marked(points) == set(points)
    assert points[REFERENCE_ROW[0]]["symbol"] == "diamond" and points["aaaaaaaaaaa1"]["symbol"] == "circle"
    assert _drawn(browser, "chart-throughput") == 6
    assert browser.eval("document.getElementById('shown-count').textContent") == \
        "5 of 5 configurations shown"

    # Hover over the 4-batch cell's point with the mouse: its configuration and numbers.
    p = points["aaaaaaaaaaa3"]
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
    assert "aaaaaaaaaaa3" in text and "batch_size=4" in text and "m1" in text
    assert "J/token: 0.2000 (0.1800–0.2200)" in text          # value (95% interval), 4 decimals
    assert "tokens/s: 300.0" in text and "unstable" in text   # no steady window: unstable

    # Filter: untick model m2; its point and its row go.
    browser.click('input[data-facet="model"][value="m2"]')
    assert set(_points(browser, "chart-throughput")) == {r[0] for r in ROWS} | {REFERENCE_ROW[0]}
    assert "bbbbbbbbbbb1" not in _visible_rows(browser)
    assert _drawn(browser, "chart-throughput") == 5
    # Hide flagged cells: the one with a contention warning goes from chart and table.
    browser.click("#show-flagged")
    assert "aaaaaaaaaaa2" not in _points(browser, "chart-latency")
    assert "aaaaaaaaaaa2" not in _visible_rows(browser)
    browser.click("#show-flagged")
    browser.click('input[data-facet="model"][value="m2"]')

    # Energy budget 0.26 J/token: only the cells within it stay marked (and listed).
    browser.eval("var e=document.getElementById('energy-budget');e.value='0.26';"
                 "e.dispatchEvent(new Event('input'))")
    within = {r[0] for r in ROWS if r[2] <= 0.26}
    assert _marked(_points(browser, "chart-throughput")) == within | {REFERENCE_ROW[0]}
    assert _visible_rows(browser) == within | {"ccccccccccc1"}
    # ITL deadline 5 ms as well: the 8 and 16 ms cells are unmarked too.
    browser.eval("var e=document.getElementById('itl-deadline');e.value='5';"
                 "e.dispatchEvent(new Event('input'))")
    assert _marked(_points(browser, "chart-latency")) == {r[0] for r in ROWS if r[2] <= 0.26 and r[3] <= 5}
    assert _marked(_points(browser, "chart-latency")) == set()  # 0.2 J needs 8 ms here
    browser.eval("['itl-deadline','energy-budget'].forEach(function(id){var e=document."
                 "getElementById(id);e.value=e.max;e.dispatchEvent(new Event('input'));})")
    assert _marked(_points(browser, "chart-latency")) == set(points)

    # Compare: tick two rows; the comparison shows both, side by side, with their numbers.
    browser.click('input.pick[data-cell="aaaaaaaaaaa1"]')
    browser.click('input.pick[data-cell="aaaaaaaaaaa4"]')
    head = browser.eval("Array.from(document.querySelectorAll('#compare table tr:first-child th'))"
                        ".map(function(c){return c.textContent;})")
    assert head == ["", "aaaaaaaaaaa1", "aaaaaaaaaaa4"]
    row = browser.eval("Array.from(document.querySelectorAll('#compare table tr')).map(function(r){"
                       "return Array.from(r.cells).map(function(c){return c.textContent;});})"
                       ".filter(function(r){return r[0]==='J/token';})[0]")
    assert row == ["J/token", "0.5000 (0.4500–0.5500)", "0.2500 (0.2250–0.2750)"]

    # Detail: a cell with no files says so instead of drawing nothing; then a cell's
    # output-length histogram of its successful requests (the failed one left out).
    assert browser.eval("document.getElementById('detail').hidden") is True
    browser.click('button.detail[data-cell="aaaaaaaaaaa2"]')
    assert "No successful requests" in browser.eval("document.getElementById('detail-hist').textContent")
    browser.click('button.detail[data-cell="aaaaaaaaaaa1"]')
    assert "No successful" not in browser.eval("document.getElementById('detail-hist').textContent")
    assert browser.eval("document.getElementById('detail').hidden") is False
    counts = browser.eval("document.getElementById('detail-hist').data[0].y")
    edges = np.histogram_bin_edges(LENGTHS["aaaaaaaaaaa1"], bins=20)
    assert counts == np.histogram(LENGTHS["aaaaaaaaaaa1"], bins=edges)[0].tolist()
    # 20 bins of 1.1 tokens from 10: 10 alone in the first; 31 and three 32s in the last.
    assert sum(counts) == 8 and counts[0] == 1 and counts[-1] == 4
    assert browser.eval("document.querySelectorAll('#detail-hist .bars path').length") >= 1
    # One power line; idle and the cycles shaded in colours of their own, named in the legend.
    power = browser.eval("document.getElementById('detail-power').data.map(function(t){"
                         "return [t.name,t.mode,t.marker?t.marker.color:null];})")
    assert [p[0] for p in power if p[1] == "lines"] == ["cpu (estimate)"]
    legend = {p[0]: p[2] for p in power if p[1] == "markers"}
    assert {"idle", "cycle", "steady state"} <= set(legend) and len(set(legend.values())) == len(legend)
    fills = browser.eval("document.getElementById('detail-power').layout.shapes.map(function(s){"
                         "return [s.x0,s.x1,s.fillcolor];})")
    assert [0.0, 12.0, legend["idle"]] in fills and [12.5, 22.5, legend["cycle"]] in fills
    assert "idle" in browser.eval("document.querySelector('#detail-power .legend').textContent")
    browser.eval("window.scrollTo(0, 0)")
    shot = browser.screenshot(tmp_path / "interactive.png")
    assert png_size(shot)[0] >= 1000
    if os.environ.get("REPORT_SCREENSHOT"):
        shutil.copy(shot, os.environ["REPORT_SCREENSHOT"])


@needs_chromium
def test_many_cells_draw_with_webgl_and_still_filter(browser, tmp_path):
    """Past 2,000 points the charts draw with WebGL (where the browser has it): one canvas,
    not an SVG element per point; a filter still removes exactly its cells."""
    n = 2100
    rows = [_row(f"c{k:011d}", 2 ** (k % 6), 0.1 + (k % 97) / 100, 1.0 + k % 13, 50.0 + k % 300,
                 model=f"m{k % 3}") for k in range(n)]
    path = tmp_path / "many.html"
    path.write_text(render(pd.DataFrame(rows), pd.DataFrame(), [], {}, [], "many"))
    browser.send("Runtime.enable", session=True)
    browser.events.clear()
    browser.send("Page.navigate", {"url": path.resolve().as_uri()}, session=True)
    browser.wait_event("Page.loadEventFired", timeout=120)
    assert not [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"]
    gl = browser.eval("(function(){var c=document.createElement('canvas');"
                      "return !!c.getContext('webgl');})()")
    assert browser.eval("document.getElementById('chart-throughput').data[0].type") == \
        ("scattergl" if gl else "scatter")
    drawn = ("document.getElementById('chart-throughput').data.reduce(function(a,t){"
             "return a+(t.customdata?t.customdata.length:0);},0)")
    assert browser.eval(drawn) == n
    browser.send("Runtime.evaluate", {"expression": "document.querySelector("
                 "'input[data-facet=\"model\"][value=\"m1\"]').click()"}, session=True, timeout=120)
    assert browser.eval(drawn) == n - n // 3
    assert browser.eval("document.getElementById('shown-count').textContent") == \
        f"{n - n // 3} of {n} configurations shown"


@needs_chromium
def test_headline_answer_is_on_screen_without_scrolling(tmp_path):
    """At 1400×900 the page opens on the answer: per model the lowest-energy and the fastest
    configuration (and the cheapest meeting the SLO), above the charts, no scrolling."""
    summary, _ = study_frames()
    summary["slo_attainment"] = [0.99, 0.95, 0.5, 0.92, 0.8, None]
    summary["slo_target_attainment"] = 0.9
    path = tmp_path / "headline.html"
    path.write_text(render(summary, pd.DataFrame(), [], {}, [], "headline"))
    chrome = Chromium(tmp_path / "profile", 1400, 900)
    try:
        chrome.open(path)
        assert chrome.eval("window.scrollY") == 0
        box = chrome.eval("(function(){var r=document.getElementById('headline')"
                          ".getBoundingClientRect();return {top:r.top,bottom:r.bottom,right:r.right};})()")
        assert box["top"] >= 0 and box["bottom"] <= 900 and box["right"] <= 1400
        assert chrome.eval("document.getElementById('headline').getBoundingClientRect().bottom<="
                           "document.getElementById('chart-throughput').getBoundingClientRect().top")
        # By hand (test_report_data): m1 → batch 4 lowest, batch 8 fastest and cheapest
        # meeting the SLO; m2's only cell misses it.
        cells = chrome.eval("Array.from(document.querySelectorAll('#headline tbody tr')).map("
                            "function(r){return Array.from(r.cells).map(function(c){"
                            "return c.dataset.cell||c.textContent;});})")
        assert cells[0] == ["m1", "aaaaaaaaaaa3", "aaaaaaaaaaa4", "aaaaaaaaaaa4"]
        assert cells[1][:3] == ["m2", "bbbbbbbbbbb1", "bbbbbbbbbbb1"]
        assert cells[1][3].startswith("no cell meets the SLO")
        text = chrome.eval("document.getElementById('headline').innerText")
        assert "0.2000 (0.1800–0.2200) J/token" in text and "batch_size=4" in text
        assert "320.0 tokens/s" in text
    finally:
        chrome.close()


@needs_chromium
def test_sliders_mark_the_cheapest_and_fastest_configuration_per_model(browser, report_file):
    """By hand from ROWS (J/token, ITL ms, tok/s): m1 (0.50, 2, 100), (0.30, 4, 180),
    (0.20, 8, 300), (0.25, 16, 320); m2 (0.90, 3, 50). The star marks per model the lowest
    J/token within the ITL deadline and the energy budget, the triangle the highest tok/s."""
    energy, speed = "lowest J/token within the limits", "fastest within the limits"
    browser.open(report_file)
    # Default sliders: everything within; m1's cheapest is batch 4, its fastest batch 8.
    marks = _best(browser, "chart-throughput")
    assert marks[energy] == marks["best-energy"] == ["aaaaaaaaaaa3", "bbbbbbbbbbb1"]
    assert marks[speed] == marks["best-speed"] == ["aaaaaaaaaaa4", "bbbbbbbbbbb1"]
    assert _best(browser, "chart-latency")[energy] == ["aaaaaaaaaaa3", "bbbbbbbbbbb1"]
    # The ITL deadline moved with the mouse to about 5 ms: m1's 2 and 4 ms cells are left, the
    # cheaper is batch 2 (0.30 J); m2's 3 ms cell stays.
    low, high = (float(browser.eval(f"document.getElementById('itl-deadline').{a}")) for a in ("min", "max"))
    box = browser.rect("#itl-deadline")
    browser.click_at(box["x"] + box["w"] * (5.0 - low) / (high - low), box["y"] + box["h"] / 2)
    assert 4.0 <= float(browser.eval("document.getElementById('itl-deadline').value")) < 8.0
    marks = _best(browser, "chart-throughput")
    assert marks[energy] == marks["best-energy"] == ["aaaaaaaaaaa2", "bbbbbbbbbbb1"]
    assert marks[speed] == marks["best-speed"] == ["aaaaaaaaaaa2", "bbbbbbbbbbb1"]
    # Deadline back to the right end; an energy budget of 0.26 J: m1's 0.20 and 0.25 J cells
    # are within, the fastest is batch 8 (320 tok/s); m2 (0.90 J) has none.
    box = browser.rect("#itl-deadline")
    browser.click_at(box["x"] + box["w"] - 1, box["y"] + box["h"] / 2)
    browser.eval("var e=document.getElementById('energy-budget');e.value='0.26';"
                 "e.dispatchEvent(new Event('input'))")
    marks = _best(browser, "chart-throughput")
    assert marks[energy] == marks["best-energy"] == ["aaaaaaaaaaa3"]
    assert marks[speed] == marks["best-speed"] == ["aaaaaaaaaaa4"]
    # 0.22 J: only batch 4 is left, both cheapest and fastest.
    browser.eval("var e=document.getElementById('energy-budget');e.value='0.22';"
                 "e.dispatchEvent(new Event('input'))")
    marks = _best(browser, "chart-throughput")
    assert marks[speed] == marks["best-speed"] == marks[energy] == ["aaaaaaaaaaa3"]
    # The mark is visible in the table (the row's first cell says so).
    assert "least J" in browser.eval("getComputedStyle(document.querySelector("
                                     "'tr.best-energy td'),'::after').content")


@needs_chromium
def test_filters_by_precision_and_varying_axes_and_fixed_columns_hidden(browser, report_file):
    """The filter bar has precision (dtype) and the axis that varies (batch_size); unticking
    batch 4 removes its row and point, and m1's cheapest becomes batch 8 (0.25 J). dtype is
    float32 everywhere: its column is hidden until asked for."""
    browser.open(report_file)
    groups = browser.eval("Array.from(document.querySelectorAll('#facet-filters .facet')).map("
                          "function(g){return g.firstChild.textContent;})")
    assert groups == ["model: ", "backend: ", "device: ", "dtype: ", "batch_size: "]
    values = browser.eval("Array.from(document.querySelectorAll('input[data-facet=batch_size]'))"
                          ".map(function(b){return b.value;})")
    assert values == ["1", "2", "4", "8", "16"]  # numbers in order, written as integers
    browser.click('input[data-facet="batch_size"][value="4"]')
    assert "aaaaaaaaaaa3" not in _visible_rows(browser)
    assert "aaaaaaaaaaa3" not in _points(browser, "chart-throughput")
    assert _best(browser, "chart-throughput")["best-energy"] == ["aaaaaaaaaaa4", "bbbbbbbbbbb1"]
    browser.click('input[data-facet="dtype"][value="float32"]')
    assert _visible_rows(browser) == set()
    browser.click('input[data-facet="dtype"][value="float32"]')
    # The dtype column (one value) is hidden by default; batch_size (varies) is shown.
    shown = ("(function(){var h=Array.from(document.querySelector('table.sortable').tHead.rows[0].cells)"
             ".filter(function(c){return c.textContent===%s;})[0];return getComputedStyle(h).display;})()")
    assert browser.eval(shown % '"dtype"') == "none"
    assert browser.eval(shown % '"batch_size"') != "none"
    assert "dtype=float32" in browser.eval("document.getElementById('fixed-axes').textContent")
    browser.click("#show-fixed")
    assert browser.eval(shown % '"dtype"') == "table-cell"
