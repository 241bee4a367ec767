"""The cell-settings -> vllm.LLM(...) mapping; pure, needs no vLLM."""

from __future__ import annotations

import importlib.util
import json
import struct
from itertools import product

import pytest

from llm_energy.backends.base import BackendUnavailable
from llm_energy.backends.vllm_backend import (
    CPU_KV_CACHE_MIN_BYTES,
    CPU_MAX_MEMORY_UTILIZATION,
    VllmBackend,
    count_parameters,
    cpu_kv_cache_bytes,
    engine_kwargs,
    kv_bytes_per_token,
)
from llm_energy.backends.vllm_spec import VllmConfig

LLAMA_8B = {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "hidden_size": 4096, "vocab_size": 128256}


def cell_settings(**overrides):
    """One cell's settings as the matrix builds them from the default VllmConfig."""
    config = VllmConfig()
    settings = {name: values[0] for name, values in config.axes().items()}
    settings.update(config.fixed())
    settings.update(overrides)
    return settings


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_8B))
    return tmp_path


def test_every_vllm_config_key_is_mapped():
    kwargs = engine_kwargs("/models/m", cell_settings(), "cuda")
    assert kwargs["model"] == kwargs["tokenizer"] == "/models/m"
    assert kwargs["max_num_seqs"] == 8
    assert kwargs["dtype"] == "bfloat16"
    assert kwargs["tensor_parallel_size"] == 1
    assert kwargs["max_model_len"] == 1024
    assert kwargs["gpu_memory_utilization"] == 0.9
    # vLLM's own defaults differ between releases: booleans are always explicit.
    assert kwargs["enable_prefix_caching"] is False
    assert kwargs["enforce_eager"] is False
    assert kwargs["disable_log_stats"] is True
    assert isinstance(kwargs["seed"], int)
    # Optional settings left at None are not passed (vLLM picks).
    assert "quantization" not in kwargs
    assert "max_num_batched_tokens" not in kwargs
    # 'mode' selects the backend's way of running, it is no engine argument.
    assert "mode" not in kwargs


def test_all_axis_values_map():
    config = VllmConfig(max_num_seqs=[1, 64], dtype=["float32", "bfloat16", "float16"],
                        quantization=[None, "fp8"], tensor_parallel_size=[1, 2],
                        max_num_batched_tokens=[None, 2048], enable_prefix_caching=[False, True],
                        enforce_eager=[False, True])
    axes = config.axes()
    for values in product(*axes.values()):
        settings = dict(zip(axes, values), **config.fixed())
        kwargs = engine_kwargs("/m", settings, "cuda")
        assert kwargs["max_num_seqs"] == settings["max_num_seqs"]
        assert kwargs["dtype"] == settings["dtype"]
        assert kwargs.get("quantization") == settings["quantization"]
        assert kwargs["tensor_parallel_size"] == settings["tensor_parallel_size"]
        assert kwargs.get("max_num_batched_tokens") == settings["max_num_batched_tokens"]
        assert kwargs["enable_prefix_caching"] is settings["enable_prefix_caching"]
        assert kwargs["enforce_eager"] is settings["enforce_eager"]


def test_missing_settings_take_defaults():
    assert engine_kwargs("/m", {}, "cuda") == engine_kwargs("/m", cell_settings(), "cuda")


def test_unknown_setting_is_rejected():
    with pytest.raises(ValueError, match="max_num_seq"):
        engine_kwargs("/m", {"max_num_seq": 4}, "cuda")


def test_unknown_device_is_rejected():
    with pytest.raises(ValueError, match="device"):
        engine_kwargs("/m", {}, "tpu")


def test_cuda_keeps_memory_fraction_and_no_kv_size(model_dir):
    kwargs = engine_kwargs(model_dir, cell_settings(gpu_memory_utilization=0.95), "cuda")
    assert kwargs["gpu_memory_utilization"] == 0.95
    assert "kv_cache_memory_bytes" not in kwargs
    assert engine_kwargs(model_dir, {}, "cuda:1")["gpu_memory_utilization"] == 0.9


def test_cpu_caps_memory_fraction():
    kwargs = engine_kwargs("/nonexistent", cell_settings(gpu_memory_utilization=0.9), "cpu")
    assert kwargs["gpu_memory_utilization"] == CPU_MAX_MEMORY_UTILIZATION
    assert "kv_cache_memory_bytes" not in kwargs  # no config.json: vLLM sizes it
    low = engine_kwargs("/nonexistent", cell_settings(gpu_memory_utilization=0.2), "cpu")
    assert low["gpu_memory_utilization"] == 0.2


def test_cpu_sizes_kv_cache_for_the_cell(model_dir):
    kwargs = engine_kwargs(model_dir, cell_settings(max_num_seqs=32, max_model_len=1000), "cpu")
    per_token = 32 * 2 * 8 * 128 * 2  # layers x (K, V) x kv heads x head dim x bf16
    need = 32 * 1024 * per_token  # max_model_len rounded up to whole 128-token blocks
    assert need <= kwargs["kv_cache_memory_bytes"] <= 2 * need
    fp32 = engine_kwargs(model_dir, cell_settings(max_num_seqs=32, max_model_len=1000,
                                                  dtype="float32"), "cpu")
    assert fp32["kv_cache_memory_bytes"] == 2 * kwargs["kv_cache_memory_bytes"]


def test_cpu_kv_cache_has_a_floor(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"num_hidden_layers": 2, "num_attention_heads": 2, "hidden_size": 64}))
    assert cpu_kv_cache_bytes(tmp_path, "bfloat16", 1, 128) == CPU_KV_CACHE_MIN_BYTES


def test_kv_bytes_per_token():
    assert kv_bytes_per_token(LLAMA_8B, "bfloat16") == 32 * 2 * 8 * 128 * 2
    # no num_key_value_heads: multi-head attention
    mha = {"num_hidden_layers": 4, "num_attention_heads": 4, "hidden_size": 256}
    assert kv_bytes_per_token(mha, "float32") == 4 * 2 * 4 * 64 * 4
    # explicit head_dim wins over hidden_size / heads
    assert kv_bytes_per_token({**mha, "head_dim": 128}, "float16") == 4 * 2 * 4 * 128 * 2
    # multimodal configs nest the language model
    assert kv_bytes_per_token({"text_config": mha}, "float32") == 4 * 2 * 4 * 64 * 4
    assert kv_bytes_per_token({"model_type": "unknown"}, "bfloat16") is None


def test_count_parameters(tmp_path):
    header = {"__metadata__": {"format": "pt"},
              "a": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]},
              "b": {"dtype": "F32", "shape": [5], "data_offsets": [48, 68]}}
    raw = json.dumps(header).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(68))
    assert count_parameters(tmp_path) == 17
    assert count_parameters(tmp_path / "missing") is None


def test_server_mode_is_not_the_offline_backend():
    with pytest.raises(ValueError, match="server"):
        VllmBackend("/m", cell_settings(mode="server"), "cpu")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None,
                    reason="vllm is importable in this environment")
def test_load_without_vllm_says_what_to_install():
    backend = VllmBackend("/m", cell_settings(), "cpu")
    with pytest.raises(BackendUnavailable, match="make venv-vllm"):
        backend.load()
    backend.close()  # closing a backend that never loaded is harmless


def test_server_that_dies_during_the_workload_is_named_with_its_exit_status(monkeypatch):
    """The client sees dropped connections a moment before the dying server can be reaped:
    the error must still name the server's exit, not only 'server disconnected'."""
    import subprocess
    import sys

    from llm_energy.backends.base import RequestRecord
    from llm_energy.backends.vllm_server import VllmServerBackend

    backend = VllmServerBackend("/m", cell_settings(mode="server"), "cpu")
    backend.process = subprocess.Popen([sys.executable, "-c",
                                        "import time, sys; time.sleep(0.5); sys.exit(9)"])
    dropped = [RequestRecord(k, 16, 0, 0.0, success=False,
                             error="RemoteProtocolError: Server disconnected") for k in range(2)]
    monkeypatch.setattr(backend, "_run", lambda prompts, n, exact: dropped)
    try:
        with pytest.raises(RuntimeError, match=rf"vLLM server \(pid {backend.process.pid}\) "
                                               r"exited with status 9 during the workload"):
            backend.generate([[1, 2]] * 2, 4)
    finally:
        backend.process.wait()
