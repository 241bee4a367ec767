"""The transformers backend's declaration: settings, pruning, environments (see registry.py).
Its code is `transformers_backend.py`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field

from llm_energy.backends.registry import PIPELINE_ENVIRONMENT, BackendSpec
from llm_energy.backends.settings import (
    BackendSettings,
    BoolAxis,
    DtypeAxis,
    PositiveIntAxis,
)


class TransformersConfig(BackendSettings):
    batch_size: PositiveIntAxis = [1]
    dtype: DtypeAxis = ["float32"]
    attn_implementation: Annotated[
        list[Literal["sdpa", "eager"]], Field(min_length=1)
    ] = ["sdpa"]
    torch_compile: BoolAxis = [False]
    cache_implementation: Annotated[
        list[Literal["dynamic", "static"]], Field(min_length=1)
    ] = ["dynamic"]
    torch_compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = Field(
        "default", description="torch.compile mode when torch_compile is true")


def _prune(settings: Mapping[str, Any], device: str) -> str | None:
    if device == "cpu" and settings.get("dtype") == "float16":
        return "float16 matmuls on CPU are emulated in PyTorch; not a deployable configuration"
    return None


SPEC = BackendSpec(
    name="transformers",
    config=TransformersConfig,
    implementation="llm_energy.backends.transformers_backend:TransformersBackend",
    batch_setting="batch_size",
    prune=_prune,
    packages=("torch", "transformers", "tokenizers", "accelerate", "bitsandbytes", "torchao"),
    import_name="transformers",
    **PIPELINE_ENVIRONMENT,
    install_hint="run `make venv` (torch + transformers into .venv)",
    base_mem_mb=3072,
    # Frozen (study.identity): the settings release 1 hashed.
    release_1_settings=("batch_size", "dtype", "attn_implementation", "torch_compile",
                        "cache_implementation", "torch_compile_mode"),
)
