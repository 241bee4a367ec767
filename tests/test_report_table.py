"""The report's per-model tables, drawn in the page from the embedded data and paged: a
page of rows at a time, sorting over all rows (not just the page), and the filters
counting and hiding rows the page does not show."""

import json

import pandas as pd
from test_report_browser import Chromium, _row, needs_chromium

from llm_energy.analysis.report import render


@needs_chromium
def test_tables_are_paged_and_sort_and_filter_every_row(tmp_path):
    n = 250
    # Energy per token falls with the index; cell 0 has none (sorts last both ways).
    rows = [_row(f"c{k:011d}", k % 50 + 1, None if k == 0 else 1.0 / k, 1.0 + k, 10.0 * k)
            for k in range(n)]
    path = tmp_path / "report.html"
    path.write_text(render(pd.DataFrame(rows), pd.DataFrame(), [], {}, [], "paged"))
    chrome = Chromium(tmp_path / "profile")
    try:
        chrome.open(path)
        page = chrome.eval("window.llmEnergyTables && document.querySelectorAll("
                           "'table.sortable tbody tr').length")
        assert page == 25
        assert chrome.eval("document.querySelector('.pager span').textContent") \
            == "rows 1–25 of 250 "
        assert chrome.eval("document.getElementById('shown-count').textContent") \
            == f"{n} of {n} configurations shown"

        def first_column(header):
            return chrome.eval(f"""(function(){{var t=document.querySelector('table.sortable');
                var i=Array.from(t.tHead.rows[0].cells).findIndex(function(c){{
                  return c.textContent=={json.dumps(header)};}});
                return Array.from(t.tBodies[0].rows).map(function(r){{return r.cells[i].dataset.v;}});
              }})()""")

        # Ascending J/token: the page starts at the smallest of all 250 (cell 249).
        headers = chrome.eval("Array.from(document.querySelector('table.sortable').tHead"
                              ".rows[0].cells).map(function(c){return c.textContent;})")
        chrome.click(f"table.sortable th:nth-child({headers.index('J/token') + 1})")
        energies = [float(v) for v in first_column("J/token")]
        assert energies == sorted(1.0 / k for k in range(1, n))[:25]
        # The last page ends with the cell without a value.
        for _ in range(9):
            chrome.click(".pager button:last-child")
        assert chrome.eval("document.querySelector('.pager span').textContent") \
            == "rows 226–250 of 250 "
        values = first_column("J/token")
        assert values[-1] == "" and len(values) == 25

        # The energy budget at 0.01 J/token keeps cells 100..249 (1/k <= 0.01) and cell 0
        # (no value: not counted against it): 151 rows of 250.
        chrome.eval("var e=document.getElementById('energy-budget');e.value='0.01';"
                    "e.dispatchEvent(new Event('input'))")
        assert chrome.eval("document.querySelector('.pager span').textContent").endswith(
            " of 151 ")
        assert chrome.eval("document.getElementById('shown-count').textContent") \
            == f"151 of {n} configurations shown"
    finally:
        chrome.close()
