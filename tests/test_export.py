"""The ML.ENERGY export: the leaderboard app's layout and types, values equal to the summary's,
only stable configurations in the app files."""

import json

import pandas as pd
import pytest
from test_mlenergy_app_schema import check_app_files

from llm_energy.analysis.export import APP_FIELDS, SIDECAR, to_mlenergy, write_mlenergy
from llm_energy.backends.checkpoint_facts import ModelFacts

# The fields the issue and the ML.ENERGY leaderboard (scripts/build_data.py) name.
REQUIRED = ("energy_per_token_joules", "energy_per_request_joules", "avg_power_watts",
            "median_itl_ms", "p90_itl_ms", "p95_itl_ms", "p99_itl_ms",
            "output_throughput_tokens_per_sec", "avg_batch_size", "max_num_seqs", "gpu_model",
            "num_gpus", "model_id", "nickname", "avg_output_len", "tensor_parallel")

# Field (top level, or in the `llm_energy` object) → summary column it must equal.
EQUAL = {"median_itl_ms": "itl_ms_p50",
         "p90_itl_ms": "itl_ms_p90", "p95_itl_ms": "itl_ms_p95", "p99_itl_ms": "itl_ms_p99",
         "avg_batch_size": "avg_batch_size", "total_energy_joules": "steady_state_energy_j",
         "steady_state_duration_seconds": "steady_state_duration_s"}
# Fields of the energy window (`llm_energy.energy_window`): window → summary column.
WINDOWED = {
    "energy_per_token_joules": {"steady_state": "steady_state_energy_per_output_token_j",
                                "cycle": "energy_per_output_token_j"},
    "avg_power_watts": {"steady_state": "steady_state_avg_power_w", "cycle": "avg_power_w"},
    "output_throughput_tokens_per_sec": {"steady_state": "steady_state_output_tokens_per_s",
                                         "cycle": "output_tokens_per_s"},
}
FACTS = {"llama": ModelFacts(8_030_000_000, 8_030_000_000, "Dense Transformer"),
         "org/moe": ModelFacts(30_000_000_000, 3_000_000_000, "MoE")}


def field(config: dict, name: str):
    return config[name] if name in config else config["llm_energy"][name]


def check_equal(config: dict, row: pd.Series) -> None:
    for name, column in EQUAL.items():
        want = row[column]
        assert field(config, name) == (None if pd.isna(want) else pytest.approx(want)), name


def check_windowed(config: dict, row: pd.Series) -> None:
    """Energy per token, power and throughput from the same window, equal to the summary's,
    so that J/token = W ÷ (tokens/s) within 0.1%."""
    window = config["llm_energy"]["energy_window"]
    for name, columns in WINDOWED.items():
        assert config[name] == pytest.approx(row[columns[window]]), name
    ratio = config["avg_power_watts"] / config["output_throughput_tokens_per_sec"]
    assert abs(ratio - config["energy_per_token_joules"]) <= 1e-3 * ratio


def summary_table() -> pd.DataFrame:
    base = {"backend": "vllm", "dtype": "bfloat16", "status": "ok", "cycles": 3, "error": None,
            "output_tokens": 640.0, "requests": 8.0, "duration_s": 40.0}
    gpu = {**base, "cell_id": "aaaaaaaaaaa1", "model": "llama", "max_num_seqs": 8,
           "tensor_parallel_size": 2, "device": "cuda", "device_name": "NVIDIA H100 80GB HBM3",
           "energy_source": "nvml-counter", "gpu_energy_j": 500.0,
           "energy_per_output_token_j": 0.8, "steady_state_energy_per_output_token_j": 0.7,
           "steady_state_energy_per_output_token_j_ci95_low": 0.65,
           "steady_state_energy_per_output_token_j_ci95_high": 0.75,
           "steady_state_energy_j": 420.0, "steady_state_duration_s": 25.0, "avg_power_w": 310.0,
           "steady_state_avg_power_w": 16.8, "steady_state_output_tokens_per_s": 24.0,
           "itl_ms_p50": 20.0, "itl_ms_p90": 25.0, "itl_ms_p95": 28.0, "itl_ms_p99": 40.0,
           "output_tokens_per_s": 32.0, "avg_batch_size": 7.5}
    rows = [
        gpu,
        # CPU cell with a long steady state and estimated energy: stable, shown as a CPU.
        {**gpu, "cell_id": "aaaaaaaaaaa4", "model": "org/moe", "backend": "transformers",
         "max_num_seqs": None, "batch_size": 4, "tensor_parallel_size": None, "device": "cpu",
         "device_name": "AMD EPYC 7B13", "energy_source": "estimate", "gpu_energy_j": None,
         "cpu_energy_j": 90.0, "dtype": "float32", "avg_batch_size": 3.9},
        # CPU cell that never reached a steady state: whole-cycle energy, not stable.
        {**base, "cell_id": "aaaaaaaaaaa2", "model": "llama", "backend": "transformers",
         "batch_size": 4, "device": "cpu", "device_name": "Some CPU", "energy_source": "estimate",
         "cpu_energy_j": 90.0, "energy_per_output_token_j": 1.25,
         "steady_state_energy_per_output_token_j": None, "steady_state_energy_j": None,
         "steady_state_duration_s": None, "avg_power_w": 15.0, "itl_ms_p50": 50.0,
         "itl_ms_p90": 60.0, "itl_ms_p95": 61.0, "itl_ms_p99": 70.0, "output_tokens_per_s": 12.0,
         "avg_batch_size": 3.0},
        {**base, "cell_id": "aaaaaaaaaaa3", "model": "llama", "max_num_seqs": 64, "status": "failed",
         "cycles": 0, "error": "CUDA out of memory", "device": "cuda"},
    ]
    return pd.DataFrame(rows)


LENGTHS = {"aaaaaaaaaaa1": [70, 80, 90, 100, 60, 80, 80, 80],
           "aaaaaaaaaaa4": [1, 200, 80, 80, 80, 80, 79, 40],
           "aaaaaaaaaaa2": [80] * 8}


def export(tmp_path, summary=None, facts=FACTS, lengths=LENGTHS, task="study"):
    paths = write_mlenergy(summary_table() if summary is None else summary, tmp_path, task,
                           facts, lengths)
    return {str(p.relative_to(tmp_path)): json.loads(p.read_text()) for p in paths}


def test_app_layout_types_and_values(tmp_path):
    summary = summary_table()
    files = export(tmp_path, summary)
    assert set(files) == {"index.json", "tasks/study.json", "models/llama__study.json",
                          "models/org__moe__study.json", SIDECAR}
    check_app_files(tmp_path)  # the app's types and loader paths
    index, doc = files["index.json"], files["tasks/study.json"]
    assert index["tasks"] == ["study"]
    assert index["architectures"] == {"llm": ["study"], "mllm": [], "diffusion": []}
    assert index["models"]["org/moe"] == {
        "nickname": "org/moe", "total_params_billions": 30.0, "activated_params_billions": 3.0,
        "architecture": "MoE", "weight_precision": "float32"}
    configs = {c["llm_energy"]["cell_id"]: c for c in doc["configurations"]}
    # Only stable, successful cells reach the app.
    assert set(configs) == {"aaaaaaaaaaa1", "aaaaaaaaaaa4"}
    for cell_id, config in configs.items():
        assert list(config)[:len(APP_FIELDS)] == list(APP_FIELDS)
        assert set(config) == {*APP_FIELDS, "llm_energy"}  # extras only in the namespace
        row = summary.set_index("cell_id").loc[cell_id]
        check_equal(config, row)
        check_windowed(config, row)
        assert config["llm_energy"]["energy_window"] == "steady_state"
        assert config["avg_output_len"] == pytest.approx(80.0)
        assert config["energy_per_request_joules"] == pytest.approx(0.7 * 80)
        assert config["llm_energy"]["total_output_tokens"] == 640  # counts as ints
        assert type(config["llm_energy"]["num_requests"]) is int
    gpu, cpu = configs["aaaaaaaaaaa1"], configs["aaaaaaaaaaa4"]
    assert gpu["gpu_model"] == "NVIDIA H100 80GB HBM3" and gpu["num_gpus"] == 2
    assert (gpu["tensor_parallel"], gpu["expert_parallel"], gpu["data_parallel"]) == (2, 1, 1)
    assert gpu["total_params_billions"] == pytest.approx(8.03)
    assert gpu["architecture"] == "Dense Transformer" and gpu["weight_precision"] == "bfloat16"
    assert gpu["llm_energy"]["energy_per_token_joules_ci95"] == [0.65, 0.75]
    assert gpu["llm_energy"]["energy_measured"] is True
    # Estimated CPU energy never reads as GPU energy.
    assert cpu["gpu_model"] == "CPU: AMD EPYC 7B13 (estimated CPU energy)" and cpu["num_gpus"] == 0
    assert cpu["max_num_seqs"] == 4 and cpu["llm_energy"]["energy_measured"] is False
    assert cpu["activated_params_billions"] == pytest.approx(3.0)
    # The rest is in the sidecar, with the reason and the full configuration.
    left = {e["cell_id"]: e for e in files[SIDECAR]["left_out"]}
    assert set(left) == {"aaaaaaaaaaa2", "aaaaaaaaaaa3"}
    assert left["aaaaaaaaaaa3"]["reason"] == "failed: CUDA out of memory"
    assert left["aaaaaaaaaaa2"]["reason"] == "short_steady_state:None"
    unstable = left["aaaaaaaaaaa2"]["configuration"]
    assert unstable["llm_energy"]["is_stable"] is False
    assert unstable["llm_energy"]["energy_window"] == "cycle"
    check_windowed(unstable, summary.set_index("cell_id").loc["aaaaaaaaaaa2"])
    assert files[SIDECAR]["exported"] == 2 and files[SIDECAR]["note"] is None


def test_model_detail_histograms(tmp_path):
    detail = export(tmp_path)["models/org__moe__study.json"]
    assert detail["model_id"] == "org/moe" and detail["task"] == "study"
    dist = detail["output_length_distribution"]
    assert len(dist["bins"]) == 51 and dist["bins"][0] == 1 and dist["bins"][-1] == 200
    assert sum(dist["counts"]) == 8 and dist["counts"][-1] == 1
    (config,) = detail["configurations"]
    assert config["output_length_distribution"] == dist
    assert config["parallelization"] == {"tensor_parallel": 1, "expert_parallel": 1,
                                         "data_parallel": 1, "notes": ""}


def test_gpu_energy_with_host_domains_is_labelled(tmp_path):
    summary = summary_table()
    summary.loc[0, "cpu_energy_j"] = 50.0
    summary.loc[0, "energy_source"] = "nvml-counter+rapl"
    config = export(tmp_path, summary)["tasks/study.json"]["configurations"][0]
    assert config["gpu_model"] == "NVIDIA H100 80GB HBM3 (measured GPU+CPU energy)"


def test_cells_without_checkpoint_facts_or_lengths_are_left_out(tmp_path):
    files = export(tmp_path, facts={"llama": FACTS["llama"]},
                   lengths={"aaaaaaaaaaa4": LENGTHS["aaaaaaaaaaa4"]})
    assert files["tasks/study.json"]["configurations"] == []
    reasons = {e["cell_id"]: e["reason"] for e in files[SIDECAR]["left_out"]}
    assert reasons["aaaaaaaaaaa1"] == "missing:output_length_distribution"
    assert reasons["aaaaaaaaaaa4"] == ("missing:total_params_billions; "
                                       "missing:activated_params_billions; missing:architecture")
    # None passed: the sidecar and the app's task title say so, and the files still load.
    assert "no configuration passed" in files[SIDECAR]["note"]
    assert "no configuration passed" in files["tasks/study.json"]["task_display_name"]
    assert files["index.json"]["models"] == {}
    check_app_files(tmp_path)


def test_leaderboard_stability_rule_and_thresholds():
    """ml-energy/data's rule: steady state >= 20 s, energy per token > 0, batch >= 85%."""
    def stable(**values):
        summary = summary_table().iloc[:1].copy()
        for column, value in values.items():
            summary.loc[0, column] = value
        docs = to_mlenergy(summary, "t", FACTS, LENGTHS)
        if docs["tasks/t.json"]["configurations"]:
            return True, None
        return False, docs[SIDECAR]["left_out"][0]["reason"]

    assert stable() == (True, None)
    assert stable(steady_state_duration_s=20.0) == (True, None)
    assert stable(steady_state_duration_s=19.9) == (False, "short_steady_state:19.9")
    assert stable(avg_batch_size=6.8) == (True, None)  # 6.8 / 8 = 85%
    assert stable(avg_batch_size=5.0) == (False, "low_batch_utilization:0.625000")
    assert stable(steady_state_energy_per_output_token_j=0.0) == \
        (False, "invalid_energy_per_token:0.0")


def test_unstable_batch_limit_cascades_to_larger_ones():
    """Their cascade: configurations differing only in max_num_seqs are unstable from the
    smallest unstable limit up; other settings form other groups."""
    base = summary_table().iloc[0].to_dict()
    rows = [{**base, "cell_id": f"c{m}{dtype[0]}", "max_num_seqs": m, "dtype": dtype,
             "avg_batch_size": batch}
            for m, dtype, batch in ((8, "bfloat16", 7.5), (16, "bfloat16", 12.0),
                                    (32, "bfloat16", 30.0), (16, "float16", 15.0))]
    lengths = {r["cell_id"]: [80] for r in rows}
    docs = to_mlenergy(pd.DataFrame(rows), "t", FACTS, lengths)
    assert {c["llm_energy"]["cell_id"] for c in docs["tasks/t.json"]["configurations"]} == \
        {"c8b", "c16f"}
    assert {e["cell_id"]: e["reason"] for e in docs[SIDECAR]["left_out"]} == \
        {"c16b": "low_batch_utilization:0.750000", "c32b": "cascade_from_unstable_batch:16"}


def test_study_named_index_does_not_overwrite_the_index(tmp_path):
    files = export(tmp_path, task="index")
    assert "tasks/index.json" in files and "tasks" in files["index.json"]


def test_export_uses_the_summarys_ratios_of_sums():
    """From runs to export: cycles at very different rates (the mean of per-cycle rates is
    far from total tokens ÷ total time); the export's J/token = W ÷ (tokens/s)."""
    from llm_energy.analysis.summary import summarise
    from llm_energy.results.io import RUN_COLUMNS

    rows = []
    for k, (tokens, duration, power) in enumerate(((1000, 1.0, 200.0), (100, 10.0, 50.0),
                                                   (100, 10.0, 50.0))):
        row = {name: None for name in RUN_COLUMNS}
        row.update(schema_version=1, cell_id="aaaaaaaaaaa1", cycle=k, model="m", backend="vllm",
                   device="cpu", status="ok", warnings=[], energy_source="estimate",
                   max_num_seqs=4, output_tokens=tokens, duration_s=duration,
                   total_energy_j=power * duration, requests=4,
                   steady_state_output_tokens=tokens // 2, steady_state_duration_s=duration / 2,
                   steady_state_energy_j=power * duration / 2 * (1 + k))
        rows.append(row)
    summary = summarise(pd.DataFrame(rows), None)
    docs = to_mlenergy(summary, "t")
    config, row = docs[SIDECAR]["left_out"][0]["configuration"], summary.iloc[0]
    assert config["llm_energy"]["energy_window"] == "steady_state"
    check_windowed(config, row)
    assert config["energy_per_token_joules"] == pytest.approx((100 + 500 + 750) / 600)


def test_tensorrt_llm_batch_limit_is_exported():
    """TensorRT-LLM's `max_batch_size` is its cells' `max_num_seqs` (it was null), and its
    tensor parallelism their `num_gpus`."""
    summary = summary_table().head(1).drop(columns=["max_num_seqs", "tensor_parallel_size"])
    summary = summary.assign(backend="tensorrt-llm", max_batch_size=16, tensor_parallel_size=2,
                             max_num_tokens=4096, device="cuda")
    from llm_energy.analysis.export import configuration

    config = configuration(summary.iloc[0], [], stable_why=(True, ""))
    assert config["max_num_seqs"] == 16 and config["num_gpus"] == 2
    assert config["tensor_parallel"] == 2
    assert config["llm_energy"]["max_num_batched_tokens"] == 4096


def test_backend_without_a_batch_setting_exports_no_batch_limit():
    from llm_energy.analysis.export import configuration

    summary = summary_table().head(1).assign(backend="openai-server")
    config = configuration(summary.iloc[0], [], stable_why=(True, ""))
    assert config["max_num_seqs"] is None


def test_export_stage_reads_lengths_and_reports_an_unreadable_requests_file(
        tmp_path, monkeypatch, capsys):
    """`llm-energy export` / rule export_mlenergy: output lengths of each cell's successful
    requests (a null length dropped); an unreadable requests.parquet leaves its cell out of
    the app files with its reason and is reported, and the export still runs."""
    from llm_energy.backends import checkpoint_facts
    from llm_energy.execution import stages

    study = tmp_path / "results" / "study"
    cells = {cell: study / "cells" / "m" / "vllm" / cell for cell in ("aaaaaaaaaaa1",
                                                                        "aaaaaaaaaaa4")}
    for path in cells.values():
        path.mkdir(parents=True)
    summary_table().to_parquet(study / "summary.parquet")
    pd.DataFrame({"cell_id": ["aaaaaaaaaaa1"] * 5, "cycle": [0, 0, 0, 1, 1],
                  "output_tokens": [70, 80, 90, None, 5],
                  "success": [True, True, True, True, False]}).to_parquet(
        cells["aaaaaaaaaaa1"] / "requests.parquet")
    (cells["aaaaaaaaaaa4"] / "requests.parquet").write_bytes(b"not parquet")
    checkpoints = {model: tmp_path / model.replace("/", "__") for model in FACTS}
    for directory in checkpoints.values():
        directory.mkdir()
    by_dir = {str(d): FACTS[model] for model, d in checkpoints.items()}
    monkeypatch.setattr(checkpoint_facts, "model_facts", lambda d: by_dir[str(d)])

    stages.export(study / "summary.parquet", study / "mlenergy", "study",
                  {m: str(d) for m, d in checkpoints.items()})

    out = capsys.readouterr().out
    assert f"unreadable requests skipped: {cells['aaaaaaaaaaa4'] / 'requests.parquet'}" in out
    task = json.loads((study / "mlenergy" / "tasks" / "study.json").read_text())
    (config,) = task["configurations"]
    assert config["llm_energy"]["cell_id"] == "aaaaaaaaaaa1"
    detail = json.loads(next((study / "mlenergy" / "models").glob("*llama*")).read_text())
    (detailed,) = detail["configurations"]
    assert sum(detailed["output_length_distribution"]["counts"]) == 3  # 70, 80, 90
    assert detailed["output_length_distribution"]["bins"][0] == 70
    assert detailed["output_length_distribution"]["bins"][-1] == 90
    sidecar = json.loads((study / "mlenergy" / SIDECAR).read_text())
    reasons = {e["cell_id"]: e["reason"] for e in sidecar["left_out"]}
    assert reasons["aaaaaaaaaaa4"] == "missing:output_length_distribution"


def test_a_model_measured_in_two_dtypes_names_both_precisions(tmp_path):
    # The app shows one precision per model (ModelInfo, ModelDetail: a string); a model whose
    # stable cells ran in bfloat16 and float32 must not read as bfloat16 only.
    summary = summary_table()
    fp32 = summary[summary["cell_id"] == "aaaaaaaaaaa1"].assign(cell_id="aaaaaaaaaaa5",
                                                                 dtype="float32")
    files = export(tmp_path, pd.concat([summary, fp32], ignore_index=True),
                   lengths={**LENGTHS, "aaaaaaaaaaa5": [80] * 8})
    check_app_files(tmp_path)
    assert files["index.json"]["models"]["llama"]["weight_precision"] == "bfloat16, float32"
    detail = files["models/llama__study.json"]
    assert detail["weight_precision"] == "bfloat16, float32"
    assert sorted(c["weight_precision"] for c in files["tasks/study.json"]["configurations"]
                  if c["model_id"] == "llama") == ["bfloat16", "float32"]
    # A model with one precision keeps it as is; shared numbers stay numbers.
    assert files["index.json"]["models"]["org/moe"]["weight_precision"] == "float32"
    assert detail["total_params_billions"] == pytest.approx(8.03)
