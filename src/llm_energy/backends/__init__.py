"""Backends by name. Modules are imported lazily: each backend's packages live in its own
environment and need not be importable elsewhere."""

from __future__ import annotations

import importlib

from llm_energy.backends.base import Backend, BackendUnavailable, LoadInfo, RequestRecord

_REGISTRY = {
    "transformers": ("llm_energy.backends.transformers_backend", "TransformersBackend"),
    "vllm": ("llm_energy.backends.vllm_backend", "VllmBackend"),
}

BACKEND_NAMES = tuple(_REGISTRY)


def backend_class(name: str) -> type[Backend]:
    if name not in _REGISTRY:
        raise KeyError(f"unknown backend {name!r}; known: {', '.join(_REGISTRY)}")
    module_name, class_name = _REGISTRY[name]
    return getattr(importlib.import_module(module_name), class_name)


__all__ = ["Backend", "BackendUnavailable", "LoadInfo", "RequestRecord", "BACKEND_NAMES",
           "backend_class"]
