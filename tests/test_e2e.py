"""A real snakemake run on a small study: demo model built by the DAG, transformers cells
measured, Parquet read back and checked, then stale-only reruns from dry-run output."""

import hashlib
import json
import re

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import (
    ROOT,
    dry_run_jobs,
    edited_config,
    run_snakemake,
    small_study,
    study_dir,
    write_config,
)

from llm_energy.results import schema
from llm_energy.results.io import REQUEST_COLUMNS, RUN_COLUMNS, TIMESERIES_COLUMNS

pytestmark = pytest.mark.e2e

MAX_CYCLES = 4


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("e2e")
    study = small_study()
    # The validity gate as a busy CI machine can afford it: 2 cycles, up to 4 while the J/token
    # interval is wider than +-10%; each cycle's window at least the estimate's 1 s.
    study["measurement"].update(max_cycles=MAX_CYCLES, target_ci_rel=0.10)
    config = write_config(workdir, study)
    proc = run_snakemake(workdir, config)
    return workdir, config, study, proc


def cell_dirs(workdir):
    return sorted(p.parent for p in (study_dir(workdir) / "cells").glob("*/*/*/runs.parquet"))


def test_one_directory_per_cell(study_run):
    workdir, *_ = study_run
    dirs = cell_dirs(workdir)
    assert len(dirs) == 2
    for d in dirs:
        assert {p.name for p in d.iterdir() if not p.name.startswith(".")} >= {
            "runs.parquet", "requests.parquet", "timeseries.parquet", "provenance.json"}


def test_runs_parquet_contract(study_run):
    workdir, _, study, _ = study_run
    workload, cycles = study["workload"], study["measurement"]["cycles"]
    for d in cell_dirs(workdir):
        table = pq.read_table(d / "runs.parquet")
        for name, dtype in RUN_COLUMNS.items():
            assert table.schema.field(name).type == dtype, name
        assert "batch_size" in table.column_names and "dtype" in table.column_names
        # Every column written is declared in the column registry or is a setting.
        assert [c for c in table.column_names
                if schema.column(c) is None and not schema.is_setting(c)] == []
        runs = table.to_pandas()
        assert cycles <= len(runs) <= MAX_CYCLES and (runs["status"] == "ok").all()
        assert (runs["schema_version"] == 1).all()
        # Windows long enough by construction: the workload repeats until the estimate's
        # default window (1 s) has passed, so no cycle is below the sensor's resolution.
        assert (runs["min_window_s"] == 1.0).all() and (runs["duration_s"] >= 1.0).all()
        assert (runs["repetitions"] >= 1).all() and (runs["target_ci_rel"] == 0.10).all()
        prompts = workload["num_prompts"] * runs["repetitions"]
        assert (runs["requests"] == prompts).all()
        assert (runs["output_tokens"] == prompts * workload["output_tokens"]).all()
        assert (runs["input_tokens"] == prompts * workload["input_tokens"]).all()
        assert (runs["other_processes_cpu_s"] >= 0).all()
        # No sensor here: energy must be the labelled estimate, never an unlabelled 0 J.
        assert (runs["energy_source"] == "estimate").all()
        assert (runs["cpu_energy_source"] == "estimate").all()
        assert runs["gpu_energy_j"].isna().all() and runs["gpu_energy_source"].isna().all()
        assert (runs["total_energy_j"] > 0).all()
        assert runs["warnings"].map(lambda ws: any("estimated" in w for w in ws)).all()
        assert (runs["idle_power_w"] >= 0).all()
        expected_net = runs["total_energy_j"] - runs["idle_power_w"] * runs["duration_s"]
        assert (runs["net_energy_j"] - expected_net).abs().max() < 1e-9
        assert (runs["ttft_ms_p50"] > 0).all() and (runs["itl_ms_p50"] > 0).all()
        assert (runs["flops_per_token"] > 0).all() and (runs["achieved_tflops"] > 0).all()
        assert (runs["load_duration_s"] > 0).all()


def test_requests_and_timeseries(study_run):
    workdir, _, study, _ = study_run
    n_out = study["workload"]["output_tokens"]
    for d in cell_dirs(workdir):
        requests = pq.read_table(d / "requests.parquet")
        assert set(REQUEST_COLUMNS) <= set(requests.column_names) <= set(schema.REQUESTS)
        req = requests.to_pandas()
        runs = pd.read_parquet(d / "runs.parquet")
        assert len(req) == study["workload"]["num_prompts"] * runs["repetitions"].sum()
        assert (req["output_tokens"] == n_out).all()
        assert req["itl_ms"].map(len).eq(n_out - 1).all()
        assert (req["first_token_s"] >= req["arrival_s"]).all()
        assert (req["finish_s"] >= req["first_token_s"]).all()
        per_cycle = req.groupby("cycle")["energy_j"].sum()
        for _, run in runs.iterrows():
            assert per_cycle[run["cycle"]] == pytest.approx(run["total_energy_j"], rel=1e-3)
        ts = pq.read_table(d / "timeseries.parquet")
        assert set(TIMESERIES_COLUMNS) <= set(ts.column_names) <= set(schema.TIMESERIES)
        frame = ts.to_pandas()
        assert (frame["device"] == "cpu").all() and len(frame) > 5
        assert set(frame["phase"]) >= {"load", "cycle0"}


def test_provenance(study_run):
    workdir, *_ = study_run
    for d in cell_dirs(workdir):
        prov = json.loads((d / "provenance.json").read_text())
        assert prov["cell_config"]["cell_id"] == d.name
        assert prov["packages"]["torch"] and prov["packages"]["llm-energy"]
        assert len(prov["code_fingerprint"]) == 16
        lock = (ROOT / "requirements" / "main.txt").read_bytes()
        assert prov["requirements_lock"] == {"file": "requirements/main.txt",
                                             "sha256": hashlib.sha256(lock).hexdigest()}
        assert prov["energy_sources"] == {"cpu": "estimate"}
        assert prov["cpu_model"] and prov["host"]


def test_summary_figure_report(study_run):
    workdir, *_ = study_run
    results = study_dir(workdir)
    summary = pd.read_parquet(results / "summary.parquet")
    assert len(summary) == 2 and summary["cycles"].between(2, MAX_CYCLES).all()
    # The gate: met means the J/token interval is within +-10%; a cell stops early only then.
    for _, cell in summary.iterrows():
        assert cell["target_ci_rel"] == 0.10 and cell["ci_rel_achieved"] > 0
        assert cell["gate_met"] == (cell["ci_rel_achieved"] <= 0.10)
        assert cell["gate_met"] or cell["cycles"] == MAX_CYCLES
    assert (summary["energy_per_output_token_j_ci95_low"] <= summary["energy_per_output_token_j"]).all()
    # Ratios of sums: J/token = W ÷ (tokens/s); no negative low bound for a positive quantity.
    ratio = summary["avg_power_w"] / summary["output_tokens_per_s"]
    assert ((ratio - summary["energy_per_output_token_j"]).abs() <= 1e-3 * ratio).all()
    for col in schema.aggregated():
        if col.positive and col.interval and f"{col.name}_ci95_low" in summary:
            assert (summary[f"{col.name}_ci95_low"].dropna() >= 0).all(), col.name
    assert (results / "summary.csv").read_text().count("\n") == 3
    for fmt in ("pdf", "png", "svg"):
        assert (results / "figures" / f"energy_vs_throughput.{fmt}").stat().st_size > 1000
    html = (results / "report.html").read_text()
    # The table is drawn in the page from the embedded data: one row per cell.
    embedded = json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)'
                                    r'</script>', html, re.S).group(1))
    assert sorted(embedded["table"]["rows"]) == sorted(summary["cell_id"])
    # Self-contained: figures inline, and no markup loads anything from elsewhere (the inlined
    # plotly.js mentions URLs in its licence comments and messages; it fetches none: the
    # browser test runs the page with the network cut).
    markup = re.sub(r"<script>.*?</script>", "", html, flags=re.S)
    assert "data:image/png;base64," in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", markup)
    assert "<script src" not in html and "<link" not in markup
    for cell_id in summary["cell_id"]:
        assert cell_id in html
    matrix = pd.read_csv(results / "matrix.csv")
    assert list(matrix["status"]) == ["planned", "planned"]


def test_second_run_does_nothing(study_run):
    workdir, config, *_ = study_run
    assert dry_run_jobs(workdir, config) == {}


def test_changing_one_cell_reruns_only_that_cell(study_run):
    workdir, config, study, _ = study_run
    changed = json.loads(json.dumps(study))
    changed["backends"]["transformers"]["batch_size"] = [2, 3]
    with edited_config(config, changed):
        jobs = dry_run_jobs(workdir, config)
    # study_record: the folder's record of the config hash follows the edit.
    assert jobs == {
        "measure": 1, "matrix": 1, "aggregate": 1, "figures": 1, "report": 1, "export_mlenergy": 1,
        "study_record": 1, "all": 1}
