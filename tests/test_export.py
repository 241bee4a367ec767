"""The ML.ENERGY export: the leaderboard's field names, values equal to the summary's."""

import json

import pandas as pd
import pytest

from llm_energy.analysis.export import MLENERGY_FIELDS, to_mlenergy, write_mlenergy

# The fields the issue and the ML.ENERGY leaderboard (scripts/build_data.py) name.
REQUIRED = ("energy_per_token_joules", "energy_per_request_joules", "avg_power_watts",
            "median_itl_ms", "p90_itl_ms", "p95_itl_ms", "p99_itl_ms",
            "output_throughput_tokens_per_sec", "avg_batch_size", "max_num_seqs", "gpu_model",
            "num_gpus", "model_id", "nickname", "max_num_batched_tokens")

# Leaderboard field → summary column it must equal.
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


def check_windowed(config: dict, row: pd.Series) -> None:
    """Energy per token, power and throughput from the same window, equal to the summary's,
    so that J/token = W ÷ (tokens/s) within 0.1%."""
    window = config["llm_energy"]["energy_window"]
    for field, columns in WINDOWED.items():
        assert config[field] == pytest.approx(row[columns[window]]), field
    ratio = config["avg_power_watts"] / config["output_throughput_tokens_per_sec"]
    assert abs(ratio - config["energy_per_token_joules"]) <= 1e-3 * ratio


def summary_table() -> pd.DataFrame:
    base = {"backend": "vllm", "dtype": "bfloat16", "status": "ok", "cycles": 3, "error": None,
            "output_tokens": 640.0, "requests": 8.0, "duration_s": 20.0}
    rows = [
        {**base, "cell_id": "aaaaaaaaaaa1", "model": "llama", "max_num_seqs": 8,
         "tensor_parallel_size": 2, "device": "cuda", "device_name": "NVIDIA H100 80GB HBM3",
         "energy_source": "nvml-counter", "gpu_energy_j": 500.0,
         "energy_per_output_token_j": 0.8, "steady_state_energy_per_output_token_j": 0.7,
         "steady_state_energy_per_output_token_j_ci95_low": 0.65,
         "steady_state_energy_per_output_token_j_ci95_high": 0.75,
         "steady_state_energy_j": 420.0, "steady_state_duration_s": 25.0, "avg_power_w": 310.0,
         "steady_state_avg_power_w": 16.8, "steady_state_output_tokens_per_s": 24.0,
         "itl_ms_p50": 20.0, "itl_ms_p90": 25.0, "itl_ms_p95": 28.0, "itl_ms_p99": 40.0,
         "output_tokens_per_s": 32.0, "avg_batch_size": 7.5},
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


def test_fields_and_values_equal_the_summary(tmp_path):
    summary = summary_table()
    paths = write_mlenergy(summary, tmp_path, "study")
    assert [p.name for p in paths] == ["index.json", "study.json"]
    index = json.loads(paths[0].read_text())
    doc = json.loads(paths[1].read_text())
    assert index["tasks"] == ["study"] and set(index["models"]) == {"llama"}
    assert doc["task"] == "study"
    configs = {c["llm_energy"]["cell_id"]: c for c in doc["configurations"]}
    assert set(configs) == {"aaaaaaaaaaa1", "aaaaaaaaaaa2"}
    assert doc["excluded"] == [{"cell_id": "aaaaaaaaaaa3", "model": "llama", "backend": "vllm",
                                "reason": "CUDA out of memory"}]
    for cell_id, config in configs.items():
        assert set(REQUIRED) <= set(config)
        assert list(config)[:len(MLENERGY_FIELDS)] == list(MLENERGY_FIELDS)
        row = summary.set_index("cell_id").loc[cell_id]
        for field, column in EQUAL.items():
            want = row[column]
            assert config[field] == (None if pd.isna(want) else pytest.approx(want)), field
        assert config["model_id"] == "llama"
        check_windowed(config, row)
    gpu, cpu = configs["aaaaaaaaaaa1"], configs["aaaaaaaaaaa2"]
    # ML.ENERGY's energy per token is the steady state's; per request = that × mean output.
    assert gpu["energy_per_token_joules"] == pytest.approx(0.7)
    assert gpu["energy_per_request_joules"] == pytest.approx(0.7 * 640 / 8)
    assert gpu["llm_energy"]["energy_window"] == "steady_state"
    assert gpu["llm_energy"]["energy_per_token_joules_ci95"] == [0.65, 0.75]
    assert gpu["gpu_model"] == "NVIDIA H100 80GB HBM3" and gpu["num_gpus"] == 2
    assert gpu["max_num_seqs"] == 8 and gpu["is_stable"] is True
    assert gpu["llm_energy"]["energy_measured"] is True and gpu["llm_energy"]["energy_scope"] == "gpu"
    assert cpu["energy_per_token_joules"] == pytest.approx(1.25)
    assert cpu["llm_energy"]["energy_window"] == "cycle"
    assert cpu["gpu_model"] is None and cpu["num_gpus"] == 0 and cpu["max_num_seqs"] == 4
    assert cpu["is_stable"] is False
    assert cpu["llm_energy"]["unstable_reason"] == "short_steady_state:None"
    assert cpu["llm_energy"]["energy_measured"] is False
    assert cpu["llm_energy"]["settings"]["batch_size"] == 4


def test_leaderboard_stability_rule_and_thresholds():
    """ml-energy/data's rule: steady state >= 20 s, energy per token > 0, batch >= 85%."""
    def stable(**values):
        summary = summary_table()
        for column, value in values.items():
            summary.loc[0, column] = value
        config = to_mlenergy(summary, "t")[1]["configurations"][0]
        return config["is_stable"], config["llm_energy"]["unstable_reason"]

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
    _, doc = to_mlenergy(pd.DataFrame(rows), "t")
    got = {c["llm_energy"]["cell_id"]: (c["is_stable"], c["llm_energy"]["unstable_reason"])
           for c in doc["configurations"]}
    assert got == {"c8b": (True, None), "c16b": (False, "low_batch_utilization:0.750000"),
                   "c32b": (False, "cascade_from_unstable_batch:16"), "c16f": (True, None)}


def test_study_named_index_does_not_overwrite_the_index(tmp_path):
    paths = write_mlenergy(summary_table(), tmp_path, "index")
    assert [p.name for p in paths] == ["index.json", "index_task.json"]
    assert "tasks" in json.loads(paths[0].read_text())


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
    _, doc = to_mlenergy(summary, "t")
    config, row = doc["configurations"][0], summary.iloc[0]
    assert config["llm_energy"]["energy_window"] == "steady_state"
    check_windowed(config, row)
    assert config["energy_per_token_joules"] == pytest.approx((100 + 500 + 750) / 600)


def test_tensorrt_llm_batch_limit_is_exported():
    """TensorRT-LLM's `max_batch_size` is its cells' `max_num_seqs` (it was null), and its
    tensor parallelism their `num_gpus`."""
    summary = summary_table().head(1).drop(columns=["max_num_seqs", "tensor_parallel_size"])
    summary = summary.assign(backend="tensorrt-llm", max_batch_size=16, tensor_parallel_size=2,
                             max_num_tokens=4096)
    _, doc = to_mlenergy(summary, "study")
    (config,) = doc["configurations"]
    assert config["max_num_seqs"] == 16 and config["num_gpus"] == 2
    assert config["max_num_batched_tokens"] == 4096


def test_backend_without_a_batch_setting_exports_no_batch_limit():
    summary = summary_table().head(1).assign(backend="openai-server")
    (config,) = to_mlenergy(summary, "study")[1]["configurations"]
    assert config["max_num_seqs"] is None
