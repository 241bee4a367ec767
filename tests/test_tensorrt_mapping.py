"""TensorRT-LLM backend: the config -> API mapping against a fake `tensorrt_llm` module, the
streaming generate loop on that fake, and the failed cell where TensorRT-LLM is absent (the
real path on this machine, through the runner and a measuring child process)."""

from __future__ import annotations

import asyncio
import enum
import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import ROOT, small_study

from llm_energy.backends import BackendUnavailable, backend_class
from llm_energy.backends.tensorrt_llm_backend import (
    TensorrtLlmBackend,
    trtllm_arguments,
)
from llm_energy.backends.tensorrt_llm_spec import TRTLLM_QUANT_ALGOS
from llm_energy.study.config import validate_study
from llm_energy.study.matrix import expand


def fake_trtllm() -> types.ModuleType:
    """The part of tensorrt_llm's API the backend uses, recording what it is given."""
    module = types.ModuleType("tensorrt_llm")
    llmapi = types.ModuleType("tensorrt_llm.llmapi")
    # QuantAlgo's members are upper-case names (tensorrt_llm.quantization.mode.QuantAlgo).
    llmapi.QuantAlgo = enum.Enum("QuantAlgo", [n.upper() for n in TRTLLM_QUANT_ALGOS])

    @dataclass
    class KvCacheConfig:
        free_gpu_memory_fraction: float | None = None
        enable_block_reuse: bool = True

    @dataclass
    class QuantConfig:
        quant_algo: Any = None

    @dataclass
    class SamplingParams:
        max_tokens: int = 32
        min_tokens: int | None = None
        ignore_eos: bool = False
        top_k: int | None = None
        temperature: float | None = None
        detokenize: bool = True

    @dataclass
    class Completion:
        token_ids: list[int] = field(default_factory=list)

    @dataclass
    class Output:
        outputs: list[Completion]

    class LLM:
        instances: list[LLM] = []
        #: prompt[0] -> the (1-based) token at which the "model" emits EOS.
        eos_at: dict[int, int] = {}

        def __init__(self, **kwargs: Any) -> None:
            self.kwargs = kwargs
            self.received: list[list[int]] = []
            self.params: list[SamplingParams] = []
            self.shut_down = False
            LLM.instances.append(self)

        async def _stream(self, prompt: list[int], params: SamplingParams):
            ids: list[int] = []
            # Two tokens in the first update, then one per update (as engines batch output).
            for step in range(params.max_tokens):
                ids.append(prompt[0] + step)
                eos = LLM.eos_at.get(prompt[0]) == step + 1 and not params.ignore_eos \
                    and step + 1 >= (params.min_tokens or 0)
                if step == 0 and not eos:
                    continue
                await asyncio.sleep(0.001)
                yield Output([Completion(list(ids))])
                if eos:
                    return

        def generate_async(self, prompt: list[int], params: SamplingParams, streaming: bool):
            assert streaming is True
            self.received.append(list(prompt))
            self.params.append(params)
            return self._stream(prompt, params)

        def shutdown(self) -> None:
            self.shut_down = True

    llmapi.KvCacheConfig, llmapi.QuantConfig = KvCacheConfig, QuantConfig
    module.llmapi, module.LLM, module.SamplingParams = llmapi, LLM, SamplingParams
    module.__version__ = "fake"
    return module


SETTINGS = {"max_batch_size": 16, "dtype": "float16", "quantization": "fp8",
            "tensor_parallel_size": 2, "max_num_tokens": 4096, "max_seq_len": 2048,
            "free_gpu_memory_fraction": 0.8, "enable_block_reuse": False,
            "trust_remote_code": False}


def test_mapping_covers_every_axis():
    trt = fake_trtllm()
    args = trtllm_arguments(trt, "/models/m", SETTINGS, "cuda", max_new_tokens=32)
    kw = args.llm_kwargs
    assert kw["model"] == "/models/m" and kw["dtype"] == "float16"
    assert kw["max_batch_size"] == 16 and kw["tensor_parallel_size"] == 2
    assert kw["max_num_tokens"] == 4096 and kw["max_seq_len"] == 2048
    assert kw["kv_cache_config"] == trt.llmapi.KvCacheConfig(0.8, False)
    assert kw["quant_config"].quant_algo is trt.llmapi.QuantAlgo.FP8
    sp = args.sampling_params
    # The same output policy as every backend: exactly N tokens, EOS ignored, greedy.
    assert sp.max_tokens == sp.min_tokens == 32 and sp.ignore_eos is True and sp.top_k == 1


def test_mapping_omits_unset_optionals_and_rejects_unknowns():
    trt = fake_trtllm()
    kw = trtllm_arguments(trt, "m", {**SETTINGS, "quantization": None, "max_num_tokens": None},
                          "cuda", 8).llm_kwargs
    assert "quant_config" not in kw and "max_num_tokens" not in kw
    with pytest.raises(ValueError, match="unknown tensorrt-llm setting"):
        trtllm_arguments(trt, "m", {**SETTINGS, "max_num_seqs": 4}, "cuda", 8)
    with pytest.raises(ValueError, match="not a QuantAlgo"):
        trtllm_arguments(trt, "m", {**SETTINGS, "quantization": "int3"}, "cuda", 8)
    with pytest.raises(BackendUnavailable, match="NVIDIA GPUs only"):
        trtllm_arguments(trt, "m", SETTINGS, "cpu", 8)


def test_every_cell_the_matrix_makes_is_accepted_by_the_mapping():
    """Config and mapping cannot drift apart: each planned cell's settings map cleanly."""
    study = validate_study(small_study(
        backends={"tensorrt-llm": {"max_batch_size": [1, 8], "quantization": [None, "w4a16_awq"],
                                   "dtype": ["bfloat16"], "max_num_tokens": 2048}},
        measurement={"device": "cuda", "gpus_per_cell": 1}))
    cells, pruned = expand(study)
    assert len(cells) == 4 and not pruned
    trt = fake_trtllm()
    for cell in cells:
        assert cell.backend == "tensorrt-llm"
        settings = {**cell.settings, "trust_remote_code": False}
        kw = trtllm_arguments(trt, "m", settings, "cuda", 16).llm_kwargs
        assert kw["max_batch_size"] == cell.settings["max_batch_size"]


def test_cpu_study_prunes_tensorrt_cells_with_the_reason():
    study = validate_study(small_study(backends={"tensorrt-llm": {"max_batch_size": [4]}}))
    cells, pruned = expand(study)
    assert cells == [] and "NVIDIA GPUs only" in pruned[0].reason


def test_backend_streams_tokens_from_the_fake(monkeypatch):
    trt = fake_trtllm()
    monkeypatch.setitem(sys.modules, "tensorrt_llm", trt)
    backend = backend_class("tensorrt-llm")("m", SETTINGS, "cuda")
    assert isinstance(backend, TensorrtLlmBackend)
    info = backend.load()
    llm = trt.LLM.instances[-1]
    assert llm.kwargs["max_batch_size"] == 16 and info.extra["tensorrt_llm_version"] == "fake"
    prompts = [[100, 1, 2], [200, 3, 4], [300, 5, 6]]
    records = backend.generate(prompts, 5)
    backend.close()
    assert llm.received == prompts and llm.shut_down
    for prompt, record in zip(prompts, records):
        assert record.success, record.error
        assert record.output_token_ids == [prompt[0] + k for k in range(5)]
        times = record.token_times_s
        # Two tokens arrived together in the first update: the same time, then increasing.
        assert len(times) == 5 and times[0] == times[1] and times[1] < times[2] < times[4]


@pytest.mark.parametrize("exact", [True, False])
def test_output_policy_maps_to_per_request_sampling_params(monkeypatch, exact):
    """Exact policies: each request max_tokens = min_tokens = its target, EOS ignored;
    natural: EOS allowed, max_tokens its cap, and the output ends at EOS."""
    trt = fake_trtllm()
    trt.LLM.eos_at = {100: 2}
    monkeypatch.setitem(sys.modules, "tensorrt_llm", trt)
    backend = TensorrtLlmBackend("m", SETTINGS, "cuda")
    backend.load()
    prompts = [[100, 1, 2], [200, 3, 4], [300, 5, 6]]
    records = backend.generate(prompts, [6, 3, 4], exact)
    llm = trt.LLM.instances[-1]
    backend.close()
    lengths = [(p.max_tokens, p.min_tokens, p.ignore_eos) for p in llm.params]
    if exact:
        assert lengths == [(6, 6, True), (3, 3, True), (4, 4, True)]
        assert [r.output_tokens for r in records] == [6, 3, 4]
    else:
        assert lengths == [(6, None, False), (3, None, False), (4, None, False)]
        assert [r.output_tokens for r in records] == [2, 3, 4]   # EOS at 2, then the caps
    assert all(r.success for r in records) and [r.target_output_tokens for r in records] == [6, 3, 4]


def test_absent_package_is_backend_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # import raises ImportError
    backend = TensorrtLlmBackend("m", SETTINGS, "cuda")
    with pytest.raises(BackendUnavailable, match="envs/tensorrt-llm.yaml"):
        backend.load()


def _trt_cell(tmp_path: Path) -> dict[str, Any]:
    study = validate_study(small_study(measurement={"cycles": 1, "idle_duration_s": 0,
                                                    "warmup": {"min_runs": 0, "max_runs": 0}}))
    cell = expand(study)[0][0]
    config = json.loads(json.dumps({**cell.config, "cell_id": "trt000000000"}))
    config["backend"] = "tensorrt-llm"
    config["settings"] = {k: v for k, v in SETTINGS.items() if k != "trust_remote_code"}
    return config


def test_runner_fails_the_cell_naming_what_to_install(tmp_path, demo_model_dir, monkeypatch):
    """Real path: no TensorRT-LLM environment here, so the cell fails with the install hint;
    with an interpreter that lacks the package (the pipeline's own), the measuring child's
    BackendUnavailable becomes the failed cell's error."""
    from llm_energy.execution import runner

    monkeypatch.delenv("LLM_ENERGY_PYTHON_TENSORRT_LLM", raising=False)
    cell = _trt_cell(tmp_path)
    with open(tmp_path / "log.txt", "w") as log:
        status = runner.run_cell(cell, str(demo_model_dir), tmp_path / "a", log=log,
                                 project_dir=ROOT)
    row = pq.read_table(tmp_path / "a" / "runs.parquet").to_pylist()[0]
    assert status == "failed" and row["status"] == "failed"
    assert "no environment for backend 'tensorrt-llm'" in row["error"]
    assert "envs/tensorrt-llm.yaml" in row["error"]

    monkeypatch.setenv("LLM_ENERGY_PYTHON_TENSORRT_LLM", sys.executable)
    with open(tmp_path / "log.txt", "a") as log:
        status = runner.run_cell(cell, str(demo_model_dir), tmp_path / "b", log=log,
                                 project_dir=ROOT)
    row = pq.read_table(tmp_path / "b" / "runs.parquet").to_pylist()[0]
    assert status == "failed"
    assert row["error"].startswith("BackendUnavailable: the tensorrt-llm backend needs the "
                                   "tensorrt_llm package"), row["error"]
    assert "envs/tensorrt-llm.yaml" in row["error"]
