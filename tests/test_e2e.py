"""A real snakemake run on a small study: demo model built by the DAG, transformers cells
measured, Parquet read back and checked, then stale-only reruns from dry-run output."""

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import (
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


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("e2e")
    study = small_study()
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
        assert len(runs) == cycles and (runs["status"] == "ok").all()
        assert (runs["schema_version"] == 1).all()
        assert (runs["duration_s"] > 0).all()
        assert (runs["requests"] == workload["num_prompts"]).all()
        assert (runs["output_tokens"] == workload["num_prompts"] * workload["output_tokens"]).all()
        assert (runs["input_tokens"] == workload["num_prompts"] * workload["input_tokens"]).all()
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
        assert len(req) == study["workload"]["num_prompts"] * study["measurement"]["cycles"]
        assert (req["output_tokens"] == n_out).all()
        assert req["itl_ms"].map(len).eq(n_out - 1).all()
        assert (req["first_token_s"] >= req["arrival_s"]).all()
        assert (req["finish_s"] >= req["first_token_s"]).all()
        runs = pd.read_parquet(d / "runs.parquet")
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
        assert prov["energy_sources"] == {"cpu": "estimate"}
        assert prov["cpu_model"] and prov["host"]


def test_summary_figure_report(study_run):
    workdir, *_ = study_run
    results = study_dir(workdir)
    summary = pd.read_parquet(results / "summary.parquet")
    assert len(summary) == 2 and (summary["cycles"] == 2).all()
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
    assert html.count("<tr data-cell=") == 2
    assert "data:image/png;base64," in html and "http://" not in html.replace("http://www.w3.org", "")
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
