"""The data the interactive report embeds equals the summary's: values and 95% intervals,
labels and decimals from the column registry, the Pareto sets of `figures.pareto_cells`, the
leaderboard stability verdict of the export, the reference seam, and per cell the
output-length histogram and the power samples."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
from test_report_browser import LENGTHS, REFERENCE_ROW, ROWS, study_frames, write_cell

from llm_energy.analysis import report_data, report_details
from llm_energy.analysis.report import render
from llm_energy.results import schema


def _cells(data):
    return {c["id"]: c for c in data["cells"]}


def test_values_equal_the_summary_and_format_from_the_registry():
    summary, _ = study_frames()
    cells = _cells(report_data.build(summary))
    assert set(cells) == set(summary["cell_id"])
    for row in summary.to_dict("records"):
        cell = cells[row["cell_id"]]
        for metric in report_data.METRICS:
            value, low, high = report_data.numbers(cell, metric)
            expected = row.get(metric)
            if expected is None or pd.isna(expected):
                assert value is None
            else:
                assert value == expected
            for got, key in ((low, "_ci95_low"), (high, "_ci95_high")):
                want = row.get(metric + key)
                assert got == (None if want is None or pd.isna(want) else want)
    # 0.2 J/token with its interval, 4 decimals (the registry's digits for J/token).
    assert schema.column("energy_per_output_token_j").digits == 4
    # The page formats them (test_report_browser_series.py); the records carry no text.
    assert "text" not in cells["aaaaaaaaaaa3"] and "hover" not in cells["aaaaaaaaaaa3"]
    assert "nan" not in json.dumps(report_data.build(summary)).lower()
    data = report_data.build(summary)
    assert list(data["metrics"]) == list(report_data.METRICS)  # the order of every cell's values
    for name, meta in data["metrics"].items():
        column = schema.column(name)
        assert (meta["label"], meta["unit"], meta["digits"]) == (column.display, column.unit, column.digits)


def test_settings_flags_frontiers_and_stability():
    summary, _ = study_frames()
    summary["batch_size"] = summary["batch_size"].astype(float)  # 4.0 shows as 4
    # A 30 s steady window everywhere but in the batch-4 cell.
    summary["steady_state_duration_s"] = 30.0
    summary["steady_state_energy_per_output_token_j"] = summary["energy_per_output_token_j"]
    summary.loc[summary["cell_id"] == "aaaaaaaaaaa3", "steady_state_duration_s"] = None
    cells = _cells(report_data.build(summary))
    assert cells["aaaaaaaaaaa3"]["settings"]["batch_size"] == "4"
    assert cells["aaaaaaaaaaa3"]["settings"]["dtype"] == "float32"
    # Energy vs median ITL (lower both): 2 ms/0.5, 4 ms/0.3, 8 ms/0.2 on it; 16 ms/0.25 not.
    assert {c for c, x in cells.items() if x["frontier"]["latency"]} == \
        {"aaaaaaaaaaa1", "aaaaaaaaaaa2", "aaaaaaaaaaa3", "bbbbbbbbbbb1"}
    # Energy vs throughput (higher throughput): 300/0.2 and 320/0.25 on it; m2 alone on its own.
    assert {c for c, x in cells.items() if x["frontier"]["throughput"]} == \
        {"aaaaaaaaaaa3", "aaaaaaaaaaa4", "bbbbbbbbbbb1"}
    assert cells["aaaaaaaaaaa2"]["flagged"] and cells["aaaaaaaaaaa2"]["flags"] == \
        ["contention: other processes used 2.0 CPU cores"]
    assert not cells["aaaaaaaaaaa1"]["flagged"]
    # The leaderboard's rule (the export's): 30 s with a full batch is stable; no steady
    # window is not; and batch 8 falls with batch 4 (its cascade).
    assert cells["aaaaaaaaaaa1"]["stable"] is True and cells["aaaaaaaaaaa2"]["stable"] is True
    assert cells["aaaaaaaaaaa3"]["stable"] is False
    assert cells["aaaaaaaaaaa3"]["unstable_reason"] == "short_steady_state:None"
    assert cells["aaaaaaaaaaa4"]["stable"] is False
    assert cells["aaaaaaaaaaa4"]["unstable_reason"] == "cascade_from_unstable_batch:4"
    assert cells["ccccccccccc1"]["ok"] is False and cells["ccccccccccc1"]["stable"] is None
    assert "out of memory" in cells["ccccccccccc1"]["error"]


def test_reference_rows_carry_their_source_and_are_never_on_our_frontier():
    summary, reference = study_frames()
    data = report_data.build(summary, reference)
    cells = _cells(data)
    ref = cells[REFERENCE_ROW[0]]
    assert ref["source"] == "reference: ML.ENERGY test"
    assert report_data.numbers(ref, "energy_per_output_token_j")[0] == REFERENCE_ROW[2]
    # It beats every measured cell on both axes, yet our frontier is ours alone.
    assert not any(ref["frontier"].values()) and ref["stable"] is None
    assert cells["aaaaaaaaaaa3"]["frontier"]["throughput"]
    assert {c["source"] for c in data["cells"]} == {"measured", "reference: ML.ENERGY test"}


def test_cell_detail_histogram_and_power(tmp_path):
    write_cell(tmp_path / "c1", LENGTHS["aaaaaaaaaaa1"], n_samples=1000)
    detail = report_data.cell_detail(tmp_path / "c1")
    lengths = LENGTHS["aaaaaaaaaaa1"]  # the failed request's 999 tokens left out
    counts, edges = np.histogram(lengths, bins=20)
    assert detail["lengths"]["counts"] == counts.tolist()
    assert detail["lengths"]["bins"] == edges.tolist()
    (power,) = detail["power"]
    assert power["device"] == "cpu" and power["source"] == "estimate"
    # 1,000 samples strided by ceil(1000 / 120) = 9: 112 kept, every ninth.
    assert report_data.MAX_POWER_POINTS == 120
    assert len(power["t_s"]) == 112 and power["t_s"][:3] == [0.0, 4.5, 9.0]
    assert power["power_w"][:3] == [10.0, 12.0, 14.0]  # 10 + k % 7 for k = 0, 9, 18
    # The cycle starts 12.5 s after load and lasts 10 s; its steady window is 2–8 s into it.
    assert detail["windows"] == [[12.5, 22.5, [14.5, 20.5]]]
    # The first 500 samples (0.5 s apart) are idle: shaded apart from the cycle.
    assert detail["phases"] == [["idle", 0.0, 249.5]]
    shades = report_data.shading()
    assert len({shades["idle"], shades["cycle"], shades["steady state"]}) == 3
    assert report_data.cell_detail(tmp_path / "missing") == {"lengths": None, "power": [],
                                                            "windows": [], "phases": []}


def test_page_embeds_the_data_and_plotly_offline(tmp_path):
    summary, reference = study_frames()
    summary.loc[0, "model"] = "m1</script><script>alert(1)</script>"
    write_cell(tmp_path / "aaaaaaaaaaa1", LENGTHS["aaaaaaaaaaa1"])
    html = render(summary, pd.DataFrame(), [], {}, [], "t", reference=reference,
                  cell_dirs={"aaaaaaaaaaa1": tmp_path / "aaaaaaaaaaa1"})
    text = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html,
                     re.S).group(1)
    data = json.loads(text)
    # The details in an element of their own (parsed when a detail is first opened).
    data["details"] = json.loads(re.search(
        r'<script type="application/json" id="report-details">(.*?)</script>', html, re.S).group(1))
    assert data == json.loads(report_data.to_script(report_data.build(
        summary, reference, {"aaaaaaaaaaa1": tmp_path / "aaaaaaaaaaa1"})))
    assert "alert(1)</script>" not in text  # a name cannot close the data element
    assert set(data["details"]) == {"aaaaaaaaaaa1"}
    assert "plotly.js v" in html and "cdn.plot.ly/plotly" not in html.split("plotly.js v")[0]
    # The sliders' defaults cover every configuration (no rounding hides the largest).
    itl_max = float(re.search(r'id="itl-deadline"[^>]* max="([^"]+)"', html).group(1))
    energy_max = float(re.search(r'id="energy-budget"[^>]* max="([^"]+)"', html).group(1))
    assert itl_max >= max(r[3] for r in ROWS) and energy_max >= 0.9
    assert 'step="any"' in html


def test_leaderboard_shaped_reference_rows_draw_with_their_steady_state_numbers():
    """Rows as `analysis.reference` reads a leaderboard task file: no cell id (a
    `reference_id`), ML.ENERGY's energy, throughput and power in the steady-state columns."""
    summary, _ = study_frames()
    reference = pd.DataFrame([{
        "source": "reference: ML.ENERGY v3", "reference_id": "ML.ENERGY v3#0",
        "model_id": "org/m1", "model": "m1", "gpu_model": "H100", "num_gpus": 1,
        "status": "ok", "backend": "vllm", "device": "cuda", "device_name": "H100",
        "energy_source": "nvml-counter", "max_num_seqs": 64.0, "matched_cells": [],
        "steady_state_energy_per_output_token_j": 0.12, "steady_state_output_tokens_per_s": 900.0,
        "steady_state_avg_power_w": 108.0, "itl_ms_p50": 30.0}])
    (ref,) = report_data.reference_records(reference)
    assert ref["id"] == "ML.ENERGY v3#0" and ref["model"] == "m1" and ref["device"] == "cuda"
    assert report_data.numbers(ref, "energy_per_output_token_j") == [0.12, None, None]
    assert report_data.numbers(ref, "output_tokens_per_s")[0] == 900.0
    assert report_data.numbers(ref, "avg_power_w")[0] == 108.0 and report_data.numbers(ref, "itl_ms_p50")[0] == 30.0
    assert ref["settings"]["max_num_seqs"] == "64"
    assert ref["note"] == "J/token, tokens/s, power (W): the steady-state window's (the publisher's numbers)"
    data = report_data.build(summary, reference)
    assert "ML.ENERGY v3#0" in _cells(data)
    json.loads(report_data.to_script(data))  # serialisable (the list column included)


def test_details_in_worker_processes_equal_the_serial_ones(tmp_path, monkeypatch):
    dirs = {}
    for k in range(3):
        dirs[f"cell{k}"] = tmp_path / f"cell{k}"
        write_cell(dirs[f"cell{k}"], [5 + k, 9, 12 * (k + 1)])
    serial = report_data.cell_details(dirs)
    monkeypatch.setattr(report_details, "PARALLEL_FROM", 2)
    assert report_data.cell_details(dirs, workers=2) == serial
    assert serial["cell2"]["lengths"]["bins"][-1] == 36.0


def test_environment_shows_a_dash_not_none_for_a_local_run():
    summary, _ = study_frames()
    html = render(summary, pd.DataFrame(), [], {"c": {"host": "h", "slurm_job_id": None}}, [], "t")
    row = re.search(r"Slurm job</th><td>([^<]*)</td>", html).group(1)
    assert row == "—"


def test_headline_per_model_lowest_energy_fastest_and_cheapest_meeting_the_slo():
    """By hand from study_frames: m1's lowest J/token is batch 4 (0.20), its fastest batch 8
    (320 tok/s); with an SLO of attainment ≥ 0.9, batch 4 (0.5) and m2's only cell (0.8) miss
    it, so m1's cheapest meeting it is batch 8 (0.25 < batch 2's 0.30 < batch 1's 0.50)."""
    from llm_energy.analysis import headline

    summary, _ = study_frames()
    summary["output_tokens_per_s_ci95_low"] = summary["output_tokens_per_s"] - 20
    summary["output_tokens_per_s_ci95_high"] = summary["output_tokens_per_s"] + 20
    rows = {r["model"]: r for r in headline.headline(summary)}
    m1 = rows["m1"]
    assert (m1["energy"]["cell_id"], m1["energy"]["value"], m1["energy"]["settings"]) == \
        ("aaaaaaaaaaa3", "0.2000 (0.1800–0.2200)", "batch_size=4")
    assert (m1["fastest"]["cell_id"], m1["fastest"]["value"], m1["fastest"]["settings"]) == \
        ("aaaaaaaaaaa4", "320.0 (300.0–340.0)", "batch_size=8")
    assert m1["slo"] is None and "Cheapest meeting" not in headline.section(summary)
    # m2 has one cell: the settings that vary in the study identify it (dtype does not).
    assert rows["m2"]["energy"]["cell_id"] == rows["m2"]["fastest"]["cell_id"] == "bbbbbbbbbbb1"
    assert rows["m2"]["energy"]["settings"] == "batch_size=1"
    only = headline.headline(summary[summary["cell_id"] == "bbbbbbbbbbb1"])[0]
    assert only["energy"]["settings"] == "the study's only configuration"

    summary["slo_attainment"] = [0.99, 0.95, 0.5, 0.92, 0.8, None]
    summary["slo_target_attainment"] = 0.9
    rows = {r["model"]: r for r in headline.headline(summary)}
    assert rows["m1"]["energy"]["cell_id"] == "aaaaaaaaaaa3"  # unconstrained: unchanged
    assert (rows["m1"]["slo"]["cell_id"], rows["m1"]["slo"]["value"]) == \
        ("aaaaaaaaaaa4", "0.2500 (0.2250–0.2750)")
    assert rows["m1"]["slo"]["note"] == "SLO attainment 0.920 ≥ 0.9"
    assert rows["m2"]["slo"] is None
    assert rows["m2"]["verdict"] == "no cell meets the SLO (best attainment 0.800)"
    # The page opens with it: before the filters and charts.
    page = render(summary, pd.DataFrame(), [], {}, [], "t")
    assert page.index('id="headline"') < page.index('id="filters"') < page.index('id="chart-throughput"')
    assert "Cheapest meeting the SLO" in page and "no cell meets the SLO" in page


def test_local_runs_show_no_slurm_job():
    page = render(study_frames()[0], pd.DataFrame(), [], {"c": {"slurm_job_id": None}}, [], "t")
    assert "<th class='t'>Slurm job</th><td>—</td>" in page


def test_facets_are_precision_and_the_axes_that_vary():
    """Filters: model, backend, device, precision (dtype) where present, and each setting or
    workload axis whose value differs; the table hides by default the ones that do not."""
    summary, reference = study_frames()
    assert report_data.axes(summary) == (["batch_size"], ["dtype"])
    summary["request_rate_per_s"] = [1.0, 2.0, 1.0, 2.0, 1.0, 1.0]  # a workload axis
    summary["max_num_seqs"] = 8.0                                   # a setting, one value
    varying, fixed = report_data.axes(summary)
    assert set(varying) == {"batch_size", "request_rate_per_s"}
    assert set(fixed) == {"dtype", "max_num_seqs"}
    data = report_data.build(summary, reference)
    assert data["facets"][:4] == ["model", "backend", "device", "dtype"]
    assert set(data["facets"][4:]) == {"batch_size", "request_rate_per_s"}
    cells = _cells(data)
    assert cells["aaaaaaaaaaa2"]["axes"] == {"dtype": "float32", "batch_size": "2",
                                             "request_rate_per_s": "2"}
    assert cells[REFERENCE_ROW[0]]["axes"]["request_rate_per_s"] == "—"  # the row has none
    # The page's tables (drawn from data["table"]) have a column for each; the fixed ones
    # are named for hiding (test_report_browser checks they are hidden).
    assert set(data["table"]["fixed"]) == {"dtype", "max_num_seqs"}
    columns = dict(data["table"]["models"])["m1"]
    assert {"dtype", "batch_size", "request_rate_per_s"} <= set(columns)
    assert data["table"]["rows"]["aaaaaaaaaaa2"]["s"][columns.index("request_rate_per_s")] == "2"
    page = render(summary, pd.DataFrame(), [], {}, [], "t")
    assert "dtype=float32, max_num_seqs=8" in page  # the fixed values said once, not hidden

def test_an_unreadable_result_file_leaves_the_detail_empty_and_named(tmp_path):
    (tmp_path / "runs.parquet").write_bytes(b"PAR1 truncated")
    pd.DataFrame({"t_s": [0.0, 1.0], "device": ["cpu", "cpu"], "power_w": [5.0, 6.0],
                  "power_source": ["estimate"] * 2, "phase": ["cycle", "cycle"]}
                 ).to_parquet(tmp_path / "timeseries.parquet")
    detail = report_data.cell_detail(tmp_path)
    assert detail["windows"] == [] and detail["lengths"] is None
    assert len(detail["unreadable"]) == 1 and detail["unreadable"][0].startswith("runs.parquet: ")


def test_a_warning_shared_by_many_cells_is_listed_once_with_its_cells_folded():
    """10,000 cells on a machine without a sensor share "energy is estimated": one line with
    the count (the cells folded under it), not 10,000; a rarer warning stays per cell."""
    summary, _ = study_frames()
    summary["warnings"] = [["energy is estimated"]] * 4 + [["energy is estimated", "odd"], []]
    page = render(summary, pd.DataFrame(), [], {}, [], "t")
    section = page[page.index("<h2>Warnings</h2>"):page.index('<h2 id="failed">')]
    assert section.count("energy is estimated") == 1 and "energy is estimated: 5 cells" in section
    folded = section[section.index("<details>"):section.index("</details>")]
    assert all(f"<code>{r[0]}</code>" in folded for r in ROWS)
    assert "<li><code>bbbbbbbbbbb1</code>: odd</li>" in section
