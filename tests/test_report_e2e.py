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
from test_export import EQUAL, REQUIRED, check_windowed
from test_figures import check_figure_files
from test_report_browser import Chromium, needs_chromium, png_size

from llm_energy.analysis.figures import CAPTIONS, FIGURES

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("publish")
    config = write_config(workdir, small_study())
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
    workdir, _ = study
    summary = pd.read_parquet(study_dir(workdir) / "summary.parquet").set_index("cell_id")
    doc = json.loads((study_dir(workdir) / "mlenergy" / "test.json").read_text())
    index = json.loads((study_dir(workdir) / "mlenergy" / "index.json").read_text())
    assert index["tasks"] == ["test"]
    assert len(doc["configurations"]) == len(summary)
    for config in doc["configurations"]:
        row = summary.loc[config["llm_energy"]["cell_id"]]
        assert set(REQUIRED) <= set(config)
        for field, column in EQUAL.items():
            want = row[column]
            assert config[field] == (None if pd.isna(want) else pytest.approx(want)), field
        check_windowed(config, row)
        assert config["max_num_seqs"] == row["batch_size"]
        assert config["llm_energy"]["energy_source"] == "estimate"
        assert config["llm_energy"]["energy_measured"] is False
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
        chrome.click("table.sortable th:nth-child(2)")  # batch_size
        chrome.click("table.sortable th:nth-child(2)")
        order = chrome.eval("Array.from(document.querySelectorAll('table.sortable tbody tr'))"
                            ".map(function(r){return Number(r.cells[1].dataset.v);})")
        assert order == sorted(order, reverse=True) and len(order) == 2
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
