"""The TensorRT-LLM backend's declaration (see registry.py). Its code: `tensorrt_llm_backend.py`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from llm_energy.backends.registry import BackendSpec
from llm_energy.backends.settings import BackendSettings, DtypeAxis, PositiveIntAxis

#: TensorRT-LLM quantisation names accepted in `backends.tensorrt-llm.quantization`: the
#: members of `tensorrt_llm.llmapi.QuantAlgo` (lower case); checked here so that a typo fails
#: before any job exists, also on machines where TensorRT-LLM is not installed.
TRTLLM_QUANT_ALGOS = ("fp8", "fp8_block_scales", "fp8_per_channel_per_token", "nvfp4",
                      "w4a16", "w4a16_awq", "w4a16_gptq", "w4a8_awq", "w8a16", "w8a16_gptq",
                      "w8a8_sq_per_channel", "w4a8_qserve_per_group", "w4a8_qserve_per_channel")


class TensorrtLlmConfig(BackendSettings):
    """TensorRT-LLM through its `LLM` API (NVIDIA GPUs only)."""

    max_batch_size: PositiveIntAxis = [8]
    dtype: DtypeAxis = ["bfloat16"]
    quantization: Annotated[list[Literal[TRTLLM_QUANT_ALGOS] | None],  # type: ignore[valid-type]
                            Field(min_length=1)] = [None]
    tensor_parallel_size: PositiveIntAxis = [1]
    max_num_tokens: int | None = Field(None, gt=0, description="token budget per engine step")
    max_seq_len: int = Field(1024, gt=0, description="prompt + output limit, tokens")
    free_gpu_memory_fraction: float = Field(
        0.9, gt=0, le=1, description="share of free GPU memory for the KV cache")
    enable_block_reuse: bool = Field(False, description="KV-cache block reuse (prefix caching)")


SPEC = BackendSpec(
    name="tensorrt-llm",
    config=TensorrtLlmConfig,
    implementation="llm_energy.backends.tensorrt_llm_backend:TensorrtLlmBackend",
    batch_setting="max_batch_size",
    context_setting="max_seq_len",
    quantization_setting="quantization",
    quantization_names=lambda: TRTLLM_QUANT_ALGOS,
    parallel_setting="tensor_parallel_size",
    token_budget_setting="max_num_tokens",
    devices=("cuda",),
    devices_reason="TensorRT-LLM runs on NVIDIA GPUs only (measurement.device: cuda)",
    packages=("tensorrt-llm", "tensorrt", "torch", "transformers"),
    import_name="tensorrt_llm",
    self_threaded=True,
    venv=".venvs/tensorrt-llm",
    make_target="venv-tensorrt-llm",
    requirements="requirements/tensorrt-llm.txt",
    conda_env="envs/tensorrt-llm.yaml",
    container="envs/containers/tensorrt-llm.Dockerfile",
    container_image="resources/containers/tensorrt-llm.sif",
    install_hint="TensorRT-LLM needs an NVIDIA GPU with CUDA: create envs/tensorrt-llm.yaml "
                 "(`pip install tensorrt-llm` from NVIDIA's index, or NVIDIA's container) and "
                 "point LLM_ENERGY_PYTHON_TENSORRT_LLM at its python",
    # Frozen (study.identity): the settings release 1 hashed.
    release_1_settings=("max_batch_size", "dtype", "quantization", "tensor_parallel_size",
                        "max_num_tokens", "max_seq_len", "free_gpu_memory_fraction",
                        "enable_block_reuse"),
)
