"""Publishing, end to end on a real pipeline run: every figure in three formats (opened and
checked), the ML.ENERGY export equal to the summary, `snakemake --report` with a caption per
figure, the HTML report in headless Chromium, and `llm-energy compare`."""

import json
import subprocess
import sys
import zipfile

import pandas as pd
import pytest
from conftest import run_snakemake, small_study, study_dir, write_config
from test_export import REQUIRED, check_equal, check_windowed
from test_figures import check_figure_files
from test_mlenergy_app_schema import check_app_files
from test_report_browser import Chromium, _drawn, column_position, needs_chromium, png_size

from llm_energy.analysis.export import SIDECAR
from llm_energy.analysis.figures import CAPTIONS, FIGURES

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("publish")
    # With the opt-in per-cell power figures: their rule, files and `--report` caption.
    config = write_config(workdir, small_study() | {"figures": {"power_per_cell": True}})
    run_snakemake(workdir, config)
    return workdir, config


def test_figures_all_formats(study):
    workdir, _ = study
    figures = study_dir(workdir) / "figures"
    for name in FIGURES:
        check_figure_files(figures / name)
    summary = pd.read_parquet(study_dir(workdir) / "summary.parquet")
    for cell_id in summary["cell_id"]:
        check_figure_files(figures / "power" / cell_id)
    runs = pd.concat(pd.read_parquet(p) for p in (study_dir(workdir) / "cells").glob("*/*/*/runs.parquet"))
    # The steady-state window is on the cycle clock and inside the cycle.
    ok = runs[runs["steady_state_start_s"].notna()]
    assert len(ok) and (ok["steady_state_start_s"] >= 0).all()
    assert (ok["steady_state_end_s"] <= ok["duration_s"] + 1e-6).all()
    assert (runs["cycle_start_s"] > 0).all()


def test_export_equals_summary(study):
    """The app's files load as the app loads them; every cell is either a stable configuration
    in the app files or in the sidecar with its reason; values equal the summary's."""
    workdir, _ = study
    summary = pd.read_parquet(study_dir(workdir) / "summary.parquet").set_index("cell_id")
    data = study_dir(workdir) / "mlenergy"
    check_app_files(data)
    doc = json.loads((data / "tasks" / "test.json").read_text())
    index = json.loads((data / "index.json").read_text())
    sidecar = json.loads((data / SIDECAR).read_text())
    assert index["tasks"] == ["test"]
    configs = doc["configurations"] + [e["configuration"] for e in sidecar["left_out"]]
    assert sorted(c["llm_energy"]["cell_id"] for c in configs) == sorted(summary.index)
    assert sidecar["exported"] == len(doc["configurations"])
    assert (sidecar["note"] is None) == bool(doc["configurations"])
    for config in configs:
        row = summary.loc[config["llm_energy"]["cell_id"]]
        assert set(REQUIRED) <= set(config)
        check_equal(config, row)
        check_windowed(config, row)
        assert config["max_num_seqs"] == row["batch_size"]
        assert config["llm_energy"]["energy_source"] == "estimate"
        assert config["llm_energy"]["energy_measured"] is False
        assert config["gpu_model"].startswith("CPU") and "estimated" in config["gpu_model"]
        assert config["total_params_billions"] > 0  # from the demo checkpoint
    # Bootstrap intervals and the batch size came from requests.parquet.
    assert (summary["itl_ms_p50_boot95_low"] <= summary["itl_ms_p50_pooled"]).all()
    assert summary["avg_batch_size"].notna().all()


def test_snakemake_report_zip_has_captions(study):
    workdir, config = study
    run_snakemake(workdir, config, "--report", "results/test/report.zip")
    with zipfile.ZipFile(study_dir(workdir) / "report.zip") as z:
        names = z.namelist()
        html = z.read(next(n for n in names if n.endswith("/report.html") and n.count("/") == 1)).decode()
    for name in FIGURES:
        assert any(n.endswith(f"/{name}.png") for n in names), name
    for caption in CAPTIONS.values():  # every caption (rst) made it into the report
        assert caption.split(";")[0].split("(")[0].strip()[:40] in html


@needs_chromium
def test_report_in_browser(study, tmp_path):
    workdir, _ = study
    chrome = Chromium(tmp_path / "profile")
    try:
        chrome.open(study_dir(workdir) / "report.html")
        assert chrome.eval("performance.getEntriesByType('resource').length") == 0
        n_images = chrome.eval("Array.from(document.images).filter(function(i){"
                               "return i.complete && i.naturalWidth>0;}).length")
        assert n_images == len(FIGURES) + 2  # study figures + one power figure per cell
        batch = column_position(chrome, "batch_size")
        chrome.click(f"table.sortable th:nth-child({batch})")
        chrome.click(f"table.sortable th:nth-child({batch})")
        order = chrome.eval("Array.from(document.querySelectorAll('table.sortable tbody tr'))"
                            f".map(function(r){{return Number(r.cells[{batch - 1}].dataset.v);}})")
        assert order == sorted(order, reverse=True) and len(order) == 2
        # The interactive views: a point per cell, and a cell's detail drawn from its files
        # (every successful request in the output-length histogram, its power samples).
        assert _drawn(chrome, "chart-throughput") == 2   # the marks of the best cells left out
        cell = chrome.eval("document.querySelector('button.detail').dataset.cell")
        chrome.click(f'button.detail[data-cell="{cell}"]')
        requests = pd.concat(pd.read_parquet(p) for p in
                             (study_dir(workdir) / "cells").glob(f"*/*/{cell}/requests.parquet"))
        counts = chrome.eval("document.getElementById('detail-hist').data[0].y")
        assert sum(counts) == int(requests["success"].sum()) > 0
        assert chrome.eval("document.getElementById('detail-power').data.length") >= 1
        shot = chrome.screenshot(tmp_path / "report.png")
        assert png_size(shot)[0] >= 1000
    finally:
        chrome.close()


def test_compare_cli_same_study(study, tmp_path):
    workdir, _ = study
    summary = study_dir(workdir) / "summary.parquet"
    proc = subprocess.run([sys.executable, "-m", "llm_energy.cli", "compare", str(summary),
                           str(summary), "-o", str(tmp_path / "d.csv")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(tmp_path / "d.csv")
    assert len(table) and (table["diff"].fillna(0) == 0).all()
    assert not table["significant"].fillna(False).astype(bool).any()
