"""The transformers backend's decoding options on the real demo model: the static KV cache
and torch.compile produce the same greedy tokens as the default path, run exactly what the
cell's settings say (transformers never compiles on its own), and work through CellRunner."""

from __future__ import annotations

import json

import pytest
from conftest import small_study

from llm_energy.backends import BackendUnavailable
from llm_energy.backends.transformers_backend import TransformersBackend
from llm_energy.measure.protocol import CellRunner
from llm_energy.study.config import validate_study
from llm_energy.study.matrix import expand

PROMPTS = [[5, 17, 42, 99, 7, 3, 250, 31], [8, 8, 120, 64, 2, 77, 13, 400]]
NEW_TOKENS = 6


def generate_with(demo_model_dir, **settings):
    backend = TransformersBackend(str(demo_model_dir), {"batch_size": 2, "dtype": "float32",
                                                        **settings}, "cpu")
    backend.load()
    calls = []
    real = backend.model.generate

    def recording_generate(**kwargs):
        calls.append({k: kwargs.get(k) for k in ("cache_implementation", "disable_compile")})
        return real(**kwargs)

    backend.model.generate = recording_generate
    try:
        return backend.generate(PROMPTS, NEW_TOKENS), calls
    finally:
        backend.close()


def test_static_cache_gives_the_dynamic_cache_tokens_and_is_what_runs(demo_model_dir):
    dynamic, dynamic_calls = generate_with(demo_model_dir)
    static, static_calls = generate_with(demo_model_dir, cache_implementation="static")
    assert dynamic_calls == [{"cache_implementation": None, "disable_compile": True}]
    assert static_calls == [{"cache_implementation": "static", "disable_compile": True}]
    assert [r.output_token_ids for r in static] == [r.output_token_ids for r in dynamic]
    for record in static:
        assert record.output_tokens == NEW_TOKENS and len(record.token_times_s) == NEW_TOKENS


def test_torch_compile_without_a_compiler_is_a_clear_error(demo_model_dir, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    backend = TransformersBackend(str(demo_model_dir), {"torch_compile": True}, "cpu")
    with pytest.raises(BackendUnavailable, match="needs a C\\+\\+ compiler"):
        backend.load()


def test_compiled_static_cache_cell_runs_through_the_protocol(demo_model_dir):
    """torch.compile (inductor, C++ kernels on CPU) with the static cache, one real cell:
    compilation happens in warmup, and the measured cycle decodes every token."""
    study = validate_study(small_study(
        backends={"transformers": {"batch_size": [2], "torch_compile": True,
                                   "cache_implementation": "static"}},
        workload={"num_prompts": 2, "input_tokens": 8, "output_tokens": 4},
        measurement={"cycles": 1, "idle_duration_s": 0, "threads": 1,
                     "warmup": {"min_runs": 1, "max_runs": 1}}))
    (cell,), _ = expand(study)
    assert cell.settings["torch_compile"] is True
    assert cell.settings["cache_implementation"] == "static"
    config = json.loads(json.dumps({**cell.config, "cell_id": cell.cell_id}))
    out = CellRunner(config, str(demo_model_dir), log=lambda m: None).run()
    assert [r["status"] for r in out.runs] == ["ok"], out.runs
    assert [r["output_tokens"] for r in out.requests] == [4, 4]
    assert out.runs[0]["warmup_runs"] == 1
