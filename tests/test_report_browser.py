"""The HTML report in a real browser: headless Chromium (Debian's `chromium`), driven over
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
