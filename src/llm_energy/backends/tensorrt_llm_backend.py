"""TensorRT-LLM through its `LLM` API (`tensorrt_llm.LLM`, `SamplingParams`).

The whole mapping from a cell's settings (config.TensorrtLlmConfig) to TensorRT-LLM's API is
one function, `trtllm_arguments`, tested against a fake module (tests/test_tensorrt_mapping.py):
TensorRT-LLM installs only with NVIDIA's CUDA stack, so it cannot run in CI. Where it is absent,
`load()` raises BackendUnavailable naming what to install, and the runner turns that into a
failed cell with that message; the rest of the study runs.

Requests are submitted one by one with `generate_async(..., streaming=True)` and the stream of
each is read concurrently, so every token carries the time this process received it (the
client side of the engine's own streaming, like vLLM's front-end clock).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llm_energy.backends.base import (
    Backend,
    BackendUnavailable,
    LoadInfo,
    RequestRecord,
    check_output_lengths,
    per_request,
)
from llm_energy.backends.tensorrt_llm_spec import SPEC, TensorrtLlmConfig

# Cell keys the protocol adds that are LLM arguments without being TensorrtLlmConfig settings.
_CELL_KEYS = {"trust_remote_code": False}


def _defaults() -> dict[str, Any]:
    """Settings at their defaults: TensorrtLlmConfig's (the one place they are declared)."""
    return {**TensorrtLlmConfig.cell_defaults(), **_CELL_KEYS}


@dataclass
class TrtllmArguments:
    """What `trtllm_arguments` produced: `LLM(**llm_kwargs)`, and the sampling parameters of
    every request."""

    llm_kwargs: dict[str, Any]
    sampling_params: Any


def trtllm_arguments(trtllm: Any, model_path: str, settings: dict[str, Any], device: str,
                     max_new_tokens: int, exact: bool = True) -> TrtllmArguments:
    """Map one cell to TensorRT-LLM's API (`trtllm`: the imported `tensorrt_llm` module).

    max_batch_size, dtype, tensor parallelism, token budget and sequence length are LLM
    arguments; the KV cache is sized by `KvCacheConfig` (block reuse = prefix caching, off by
    default as in the other backends); quantization is a `QuantConfig` with the `QuantAlgo`
    member of that name. Sampling is greedy with exactly `max_new_tokens` out (EOS ignored)
    for `exact` outputs, like every backend; else EOS allowed and `max_new_tokens` the cap.
    Raises ValueError for settings it does not know."""
    defaults = _defaults()
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise ValueError(f"unknown tensorrt-llm setting(s) {unknown}; known: {sorted(defaults)}")
    if not device.startswith("cuda"):
        raise BackendUnavailable(f"TensorRT-LLM runs on NVIDIA GPUs only; the cell asks for "
                                 f"device {device!r} (set measurement.device: cuda)")
    s = {**defaults, **settings}
    llmapi = trtllm.llmapi
    kwargs: dict[str, Any] = {
        "model": str(model_path),
        "tokenizer": str(model_path),
        "dtype": str(s["dtype"]),
        "tensor_parallel_size": int(s["tensor_parallel_size"]),
        "max_batch_size": int(s["max_batch_size"]),
        "max_seq_len": int(s["max_seq_len"]),
        "trust_remote_code": bool(s["trust_remote_code"]),
        "kv_cache_config": llmapi.KvCacheConfig(
            free_gpu_memory_fraction=float(s["free_gpu_memory_fraction"]),
            enable_block_reuse=bool(s["enable_block_reuse"])),
    }
    if s["max_num_tokens"] is not None:
        kwargs["max_num_tokens"] = int(s["max_num_tokens"])
    if s["quantization"] is not None:
        name = str(s["quantization"]).upper()
        algo = getattr(llmapi.QuantAlgo, name, None)
        if algo is None:
            raise ValueError(f"tensorrt-llm: quantization {s['quantization']!r} is not a "
                             "QuantAlgo of this TensorRT-LLM")
        kwargs["quant_config"] = llmapi.QuantConfig(quant_algo=algo)
    lengths = ({"min_tokens": int(max_new_tokens), "ignore_eos": True} if exact
               else {"ignore_eos": False})
    sampling = trtllm.SamplingParams(max_tokens=int(max_new_tokens), **lengths, top_k=1,
                                     temperature=0.0, detokenize=False)
    return TrtllmArguments(kwargs, sampling)


def _import_trtllm() -> Any:
    try:
        import tensorrt_llm
    except ImportError as exc:
        raise BackendUnavailable(f"the tensorrt-llm backend needs the tensorrt_llm package "
                                 f"({exc}): {SPEC.install_hint}") from None
    except (RuntimeError, OSError) as exc:  # e.g. no CUDA driver or a missing libcudart
        raise BackendUnavailable(f"tensorrt_llm is installed but fails to import ({exc}): "
                                 "it needs an NVIDIA GPU with a matching CUDA driver") from None
    return tensorrt_llm


class TensorrtLlmBackend(Backend):
    name = "tensorrt-llm"
    config = TensorrtLlmConfig

    def __init__(self, model_path: str, settings: dict[str, Any], device: str) -> None:
        super().__init__(model_path, settings, device)
        self._llm: Any = None
        self._trtllm: Any = None

    def load(self) -> LoadInfo:
        trtllm = _import_trtllm()
        self._trtllm = trtllm
        # The output length only matters for sampling; validate the mapping before building.
        arguments = trtllm_arguments(trtllm, self.model_path, self.settings, self.device, 1)
        start = time.perf_counter()
        self._llm = trtllm.LLM(**arguments.llm_kwargs)
        return LoadInfo(
            duration_s=time.perf_counter() - start, device=self.device,
            dtype=str(arguments.llm_kwargs["dtype"]),
            extra={"tensorrt_llm_version": getattr(trtllm, "__version__", None),
                   "llm_kwargs": {k: (v if isinstance(v, (int, float, str, bool)) else repr(v))
                                  for k, v in arguments.llm_kwargs.items()},
                   "token_timestamps": "receipt time of each streamed output"},
        )

    def generate(self, prompts: list[list[int]], output_tokens: int | Sequence[int],
                 exact: bool = True) -> list[RequestRecord]:
        if self._llm is None:
            raise RuntimeError("TensorrtLlmBackend.generate called before load()")
        targets = per_request(output_tokens, len(prompts))
        params_of = {n: trtllm_arguments(self._trtllm, self.model_path, self.settings,
                                         self.device, n, exact).sampling_params
                     for n in sorted(set(targets))}
        records = asyncio.run(self._stream_all(prompts, [params_of[n] for n in targets]))
        check_output_lengths(records, targets, exact, "tensorrt-llm")
        return records

    async def _stream_all(self, prompts: list[list[int]], params_of: list[Any]
                          ) -> list[RequestRecord]:
        clock = time.perf_counter

        async def one(index: int, prompt: list[int]) -> RequestRecord:
            record = RequestRecord(request_id=index, input_tokens=len(prompt), output_tokens=0,
                                   arrival_s=clock(), output_token_ids=[])
            try:
                async for output in self._llm.generate_async(prompt, params_of[index],
                                                             streaming=True):
                    now = clock()
                    ids = list(output.outputs[0].token_ids)  # cumulative in each update
                    new = ids[len(record.output_token_ids or []):]
                    record.output_token_ids = ids
                    record.token_times_s.extend([now] * len(new))
            except Exception as exc:  # one failed request is a row
                record.success = False
                record.error = f"{type(exc).__name__}: {exc}"[:500]
            record.output_tokens = len(record.output_token_ids or [])
            return record

        # generate_async submits immediately; the engine batches up to max_batch_size.
        return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))

    def synchronize(self) -> None:
        """`generate` returns when every stream has finished."""

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            shutdown = getattr(llm, "shutdown", None)
            if callable(shutdown):
                shutdown()
