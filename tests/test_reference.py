"""Leaderboard data as a reference (`references:`): a leaderboard task file and a benchmark
results.json read into this project's columns (values by hand), matched to the study's cells
by model and GPU, drawn beside them in the reference figures and listed in the report."""

import copy
import json
import re
import typing

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from test_export import export, summary_table
from test_mlenergy_app_schema import TASK, validate

from llm_energy.analysis import figures, reference
from llm_energy.analysis.reference import (
    benchmark_configuration,
    load_references,
    match,
    read_benchmark,
    read_leaderboard,
    report_section,
    same_gpu,
)
from llm_energy.study import config as c
from llm_energy.study.config import ConfigError, validate_study
from llm_energy.study.identity import roles
from llm_energy.study.matrix import expand


def leaderboard_config(model, gpu, batch, energy, itl, throughput, power):
    return {"model_id": model, "nickname": model.split("/")[-1], "gpu_model": gpu,
            "num_gpus": 1, "total_params_billions": 8.0, "activated_params_billions": 8.0,
            "architecture": "Dense Transformer", "weight_precision": "bfloat16",
            "max_num_seqs": batch, "tensor_parallel": 1, "expert_parallel": 1,
            "data_parallel": 1, "energy_per_token_joules": energy,
            "energy_per_request_joules": energy * 500, "avg_output_len": 500.0,
            "avg_power_watts": power, "median_itl_ms": itl,
            "output_throughput_tokens_per_sec": throughput, "p90_itl_ms": itl + 1,
            "p95_itl_ms": itl + 2, "p99_itl_ms": itl + 5, "avg_batch_size": batch * 0.95}


TASK_FILE = {"task": "lm-arena-chat", "task_display_name": "LM Arena Chat", "configurations": [
    leaderboard_config("Qwen/Qwen3-8B", "H100", 8, 0.5, 10.0, 1000.0, 500.0),
    leaderboard_config("Qwen/Qwen3-8B", "H100", 64, 0.2, 20.0, 3000.0, 600.0),
    leaderboard_config("Qwen/Qwen3-8B", "B200", 8, 0.3, 7.0, 1500.0, 450.0),
    leaderboard_config("Qwen/Qwen3-14B", "H100", 8, 0.9, 14.0, 700.0, 630.0),
]}


@pytest.fixture
def task_file(tmp_path):
    validate(TASK_FILE, TASK)  # a real leaderboard task file by the app's own types
    path = tmp_path / "lm-arena-chat.json"
    path.write_text(json.dumps(TASK_FILE))
    return path


def test_leaderboard_task_file_in_our_columns(task_file):
    ref = read_leaderboard(task_file, "ML.ENERGY")
    assert len(ref) == 4
    row = ref.iloc[1]
    assert row["source"] == "reference: ML.ENERGY"
    assert (row["model_id"], row["gpu_model"], row["num_gpus"]) == ("Qwen/Qwen3-8B", "H100", 1)
    # ML.ENERGY's numbers are the steady state's: the steady-state columns.
    assert row["steady_state_energy_per_output_token_j"] == 0.2
    assert row["steady_state_output_tokens_per_s"] == 3000.0
    assert row["steady_state_avg_power_w"] == 600.0
    assert (row["itl_ms_p50"], row["itl_ms_p90"], row["itl_ms_p95"], row["itl_ms_p99"]) == \
        (20.0, 21.0, 22.0, 25.0)
    assert row["avg_batch_size"] == pytest.approx(64 * 0.95)
    # Settings under the engine's own names (vLLM: max_num_seqs, tensor_parallel_size).
    assert (row["backend"], row["max_num_seqs"], row["tensor_parallel_size"], row["dtype"]) == \
        ("vllm", 64, 1, "bfloat16")
    assert row["device"] == "cuda" and row["device_name"] == "H100"
    # Nothing invented: no whole-cycle energy, which the leaderboard does not publish.
    assert "energy_per_output_token_j" not in ref and "output_tokens_per_s" not in ref


def test_a_task_file_missing_a_field_is_refused_by_name(tmp_path):
    bad = copy.deepcopy(TASK_FILE)
    del bad["configurations"][2]["energy_per_token_joules"]
    path = tmp_path / "t.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="configuration 2 has no 'energy_per_token_joules'"):
        read_leaderboard(path, "x")


def test_our_own_export_reads_back_as_the_summarys_steady_values(tmp_path):
    """The inverse of the export's mapping: the export read as a reference gives back the
    summary's steady-state values, backend and settings."""
    export(tmp_path)
    ref = read_leaderboard(tmp_path / "tasks" / "study.json", "ours").set_index("model")
    summary = summary_table().set_index("cell_id")
    gpu, cpu = ref.loc["llama"], ref.loc["org/moe"]
    want = summary.loc["aaaaaaaaaaa1"]
    for column in ("steady_state_energy_per_output_token_j", "steady_state_avg_power_w",
                   "steady_state_output_tokens_per_s", "itl_ms_p50", "itl_ms_p99",
                   "avg_batch_size", "steady_state_energy_j", "steady_state_duration_s",
                   "output_tokens", "requests", "duration_s"):
        assert gpu[column] == pytest.approx(want[column]), column
    assert (gpu["backend"], gpu["max_num_seqs"], gpu["tensor_parallel_size"]) == ("vllm", 8, 2)
    assert gpu["device_name"] == "NVIDIA H100 80GB HBM3"
    assert (cpu["backend"], cpu["batch_size"], cpu["device"]) == ("transformers", 4, "cpu")
    assert cpu["energy_source"] == "estimate"


def benchmark_results():
    """An ml-energy/benchmark results.json, small: 1200 J over a 10 s steady state at 0.3
    J/token (4000 tokens), 4 requests of which 3 succeeded with 1000 output tokens."""
    return {
        "model_id": "Qwen/Qwen3-8B", "gpu_model": "H100", "num_gpus": 1, "max_num_seqs": 8,
        "duration": 12.0, "completed": 4, "steady_state_duration": 10.0,
        "steady_state_energy": 1200.0, "steady_state_energy_per_token": 0.3,
        "total_output_tokens": 1000, "output_throughput": 83.3, "median_itl_ms": 99.0,
        "results": [
            # A chunk of 2 tokens after 20 ms: two gaps of 10 ms; the leading 0 is dropped.
            {"success": True, "itl": [0.0, 0.01, 0.02, 0.0, 0.01]},
            {"success": True, "itl": [0.03, 0.05]},
            {"success": False, "itl": [0.5]},  # failed: not counted
        ]}


def test_benchmark_results_json_by_the_leaderboards_rules(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(benchmark_results()))
    (tmp_path / "prometheus.json").write_text(json.dumps(
        {"steady_state_stats": {"vllm:num_requests_running": 7.5}}))
    row = read_benchmark(path, "bench").iloc[0]
    assert row["steady_state_energy_per_output_token_j"] == 0.3
    assert row["steady_state_avg_power_w"] == pytest.approx(1200 / 10)
    assert row["steady_state_output_tokens_per_s"] == pytest.approx(1200 / 0.3 / 10)  # 400
    # Gaps 10, 10, 10, 10, 30, 50 ms: median 10; p90 at rank 4.5 -> 30 + 0.5 * 20 = 40.
    assert row["itl_ms_p50"] == pytest.approx(10.0)
    assert row["itl_ms_p90"] == pytest.approx(40.0)
    assert row["itl_ms_p99"] == pytest.approx(49.0)
    assert row["avg_batch_size"] == 7.5
    assert (row["steady_state_energy_j"], row["steady_state_duration_s"], row["duration_s"]) == \
        (1200.0, 10.0, 12.0)
    assert (row["output_tokens"], row["requests"], row["max_num_seqs"]) == (1000, 4, 8)
    config = benchmark_configuration(benchmark_results())
    assert config["avg_output_len"] == 250.0 and config["energy_per_request_joules"] == 75.0
    assert config["avg_batch_size"] is None  # no prometheus.json: unknown, not 0


def test_benchmark_file_without_a_steady_state_is_refused(tmp_path):
    results = benchmark_results()
    del results["steady_state_energy"]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    with pytest.raises(ValueError, match="no 'steady_state_energy'"):
        read_benchmark(path, "x")


def study_cells() -> pd.DataFrame:
    base = {"status": "ok", "backend": "vllm", "dtype": "bfloat16", "device": "cuda",
            "model": "qwen8", "energy_per_output_token_j": 0.9, "output_tokens_per_s": 700.0}
    return pd.DataFrame([
        {**base, "cell_id": "c1", "max_num_seqs": 8, "device_name": "NVIDIA H100 80GB HBM3",
         "itl_ms_p50": 12.0, "steady_state_energy_per_output_token_j": 0.6,
         "steady_state_output_tokens_per_s": 900.0},
        {**base, "cell_id": "c2", "max_num_seqs": 64, "device_name": "NVIDIA H100 80GB HBM3",
         "itl_ms_p50": 25.0, "steady_state_energy_per_output_token_j": 0.25,
         "steady_state_output_tokens_per_s": 2800.0},
        {**base, "cell_id": "c3", "max_num_seqs": 8, "device_name": "NVIDIA A100-SXM4-80GB",
         "itl_ms_p50": 15.0, "steady_state_energy_per_output_token_j": 0.7,
         "steady_state_output_tokens_per_s": 800.0},
    ])


def test_rows_match_cells_of_the_same_model_and_gpu(task_file):
    assert same_gpu("H100", "NVIDIA H100 80GB HBM3")
    assert not same_gpu("H100", "NVIDIA H100X") and not same_gpu("", "NVIDIA H100")
    ref = match(read_leaderboard(task_file, "ML.ENERGY"), study_cells(), {"qwen8": "Qwen/Qwen3-8B"})
    assert [sorted(m) for m in ref["matched_cells"]] == [["c1", "c2"], ["c1", "c2"], [], []]
    # The matched rows carry the study's model name; the others keep their model id.
    assert list(ref["model"]) == ["qwen8", "qwen8", "qwen8", "Qwen/Qwen3-14B"]
    # Nothing matches a model whose id differs, unless the reference maps it.
    assert not match(read_leaderboard(task_file, "x"), study_cells(),
                     {"qwen8": "qwen8"})["matched_cells"].map(bool).any()
    mapped = load_references([{"path": str(task_file), "kind": "mlenergy-leaderboard",
                               "label": "x", "models": {"qwen8": "Qwen/Qwen3-8B"}}],
                             study_cells(), {"qwen8": "qwen8"})
    assert mapped["matched_cells"].map(bool).sum() == 2


def test_reference_figure_draws_the_matching_rows_beside_the_cells(task_file, tmp_path,
                                                                   monkeypatch):
    ref = load_references([{"path": str(task_file), "kind": "mlenergy-leaderboard",
                            "label": "ML.ENERGY"}], study_cells(), {"qwen8": "Qwen/Qwen3-8B"})
    x, y = "itl_ms_p50", "steady_state_energy_per_output_token_j"
    ours, drawn = figures.tradeoff_data(study_cells(), x, y, ref)
    assert set(ours["cell_id"]) == {"c1", "c2", "c3"}
    assert sorted(zip(drawn[x], drawn[y])) == [(10.0, 0.5), (20.0, 0.2)]  # H100 rows only
    # The figure itself: a "reference: ML.ENERGY" line through those points, hollow diamonds.
    captured = {}

    def keep(fig, stem):
        captured[stem.name] = fig
        return []

    monkeypatch.setattr(figures, "save", keep)
    figures.draw_study(study_cells(), None, tmp_path, ref)
    assert set(captured) == set(figures.figure_names(True))
    ax = captured["reference_energy_vs_itl"].axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    line = lines["reference: ML.ENERGY"]
    assert list(zip(line.get_xdata(), line.get_ydata())) == [(10.0, 0.5), (20.0, 0.2)]
    assert line.get_marker() == "D" and line.get_markerfacecolor() == "none"
    assert "reference: ML.ENERGY" in ax.get_legend_handles_labels()[1]
    throughput = captured["reference_energy_vs_throughput"].axes[0]
    assert [list(ln.get_xdata()) for ln in throughput.get_lines()
            if ln.get_label() == "reference: ML.ENERGY"] == [[1000.0, 3000.0]]
    for fig in captured.values():
        plt.close(fig)
    # Without references: the study figures only.
    captured.clear()
    figures.draw_study(study_cells(), None, tmp_path)
    assert set(captured) == set(figures.FIGURES)


def test_report_lists_reference_rows_and_the_cells_they_match(task_file):
    ref = load_references([{"path": str(task_file), "kind": "mlenergy-leaderboard",
                            "label": "ML.ENERGY"}], study_cells(), {"qwen8": "Qwen/Qwen3-8B"})
    section = report_section(ref, study_cells())
    assert "Reference data" in section and "4 reference row(s), 2 matching" in section
    rows = section.split("<tr>")[2:]
    assert len(rows) == 4
    assert "<code>c1</code> (b=8: 0.6)" in rows[0] and "<code>c2</code> (b=64: 0.25)" in rows[0]
    assert "none (no cell of this model on this GPU)" in rows[2]  # the B200 row
    assert report_section(None, study_cells()) == ""


# ---------------------------------------------------------------- config

STUDY = {"models": [{"name": "tiny", "demo": {}}], "backends": {"transformers": {}}}


def test_readers_cover_every_kind_the_config_accepts():
    assert set(reference.READERS) == set(typing.get_args(c.ReferenceKind))


def test_references_are_analysis_only_and_change_no_cell_id(task_file):
    assert roles()["references"] == c.ANALYSIS_ONLY
    base = [cell.cell_id for cell in expand(validate_study(STUDY))[0]]
    with_ref = STUDY | {"references": [{"path": str(task_file), "kind": "mlenergy-leaderboard",
                                        "label": "ML.ENERGY", "models": {"tiny": "a/b"}}]}
    assert [cell.cell_id for cell in expand(validate_study(with_ref))[0]] == base


def _refs(task_file, **change):
    return [{"path": str(task_file), "kind": "mlenergy-leaderboard", "label": "a", **change}]


@pytest.mark.parametrize("change, key", [
    ({"path": "/nonexistent.json"}, "references[0].path"),
    ({"kind": "leaderboard"}, "references[0].kind"),
    ({"label": ""}, "references[0].label"),
    ({"models": {"nope": "a/b"}}, "references.models"),
    ({"colour": "red"}, "references[0].colour")])
def test_bad_reference_is_refused_naming_the_key(task_file, change, key):
    with pytest.raises(ConfigError, match=re.escape(f"'{key}'")) as err:
        validate_study(STUDY | {"references": _refs(task_file, **change)})
    assert "\n" not in str(err.value)


def test_a_file_that_is_no_task_file_and_a_repeated_label_are_refused(task_file, tmp_path):
    other = tmp_path / "other.json"
    other.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="'references\\[0\\].path'.*not a leaderboard task"):
        validate_study(STUDY | {"references": _refs(other)})
    with pytest.raises(ConfigError, match="'references.label'"):
        validate_study(STUDY | {"references": _refs(task_file) * 2})


# ---------------------------------------------------------------- pipeline


@pytest.mark.e2e
def test_editing_references_reruns_figures_and_report_only(tmp_path):
    """A finished one-cell study, then `references:` added: `snakemake -n` schedules no
    measurement (nor aggregation or export), only the figures and the report; run, the
    report has the reference section and the reference figures exist."""
    from conftest import dry_run_jobs, run_snakemake, small_study, study_dir, write_config

    study = small_study(backends={"transformers": {"batch_size": [2], "dtype": ["float32"]}},
                        workload={"num_prompts": 2, "input_tokens": 8, "output_tokens": 4},
                        measurement={"cycles": 1, "idle_duration_s": 0.2, "threads": 1,
                                     "warmup": {"min_runs": 1, "max_runs": 1}})
    config = write_config(tmp_path, study)
    run_snakemake(tmp_path, config)
    assert dry_run_jobs(tmp_path, config) == {}
    (tmp_path / "lm-arena-chat.json").write_text(json.dumps(TASK_FILE))
    # Relative to where snakemake runs, as a model `path` is.
    with_ref = study | {"references": [{"path": "lm-arena-chat.json",
                                        "kind": "mlenergy-leaderboard", "label": "ML.ENERGY",
                                        "models": {"tiny": "Qwen/Qwen3-8B"}}]}
    write_config(tmp_path, with_ref)
    jobs = dry_run_jobs(tmp_path, config)
    assert "measure" not in jobs and "aggregate" not in jobs and "export_mlenergy" not in jobs
    assert {"figures", "report"} <= set(jobs), jobs
    run_snakemake(tmp_path, config)
    out = study_dir(tmp_path)
    report = (out / "report.html").read_text()
    assert "Reference data" in report and "4 reference row(s), 0 matching" in report
    for name in figures.REFERENCE_FIGURES:
        assert (out / "figures" / f"{name}.png").stat().st_size > 0
    # The reference file's content is an input: editing it reruns the same two rules.
    changed = copy.deepcopy(TASK_FILE)
    changed["configurations"][0]["energy_per_token_joules"] = 0.45
    (tmp_path / "lm-arena-chat.json").write_text(json.dumps(changed))
    jobs = dry_run_jobs(tmp_path, config)
    assert set(jobs) - {"all"} == {"figures", "report"}, jobs
