"""Every backend receives identical prompt token ids: cells of three backends for the same model
and workload run through the real protocol (CellRunner), and the ids are captured where each
backend hands them to its engine: transformers' `model.generate` input tensor (real model),
the vLLM engine's `add_request` (a recording engine behind the real VllmBackend loop), and the
body an OpenAI-compatible server receives over HTTP (the real openai-server backend)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import small_study
from fakes.openai_server import FakeServer

from llm_energy.backends import backend_class
from llm_energy.backends.transformers_backend import TransformersBackend
from llm_energy.backends.vllm_backend import VllmBackend
from llm_energy.measure import protocol
from llm_energy.measure.protocol import CellRunner
from llm_energy.study.config import validate_study
from llm_energy.study.matrix import expand

OUTPUT_TOKENS = 3


class RecordingTransformers(TransformersBackend):
    seen: list[list[int]] = []

    def load(self):
        info = super().load()
        real = self.model.generate

        def generate(input_ids, attention_mask, **kwargs):
            for row, mask in zip(input_ids.tolist(), attention_mask.tolist()):
                RecordingTransformers.seen.append([t for t, m in zip(row, mask) if m])
            return real(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

        self.model.generate = generate
        return info


class RecordingEngine:
    """Stands in for vLLM's LLMEngine: records prompts, finishes each in one step."""

    def __init__(self) -> None:
        self.seen: list[list[int]] = []
        self.pending: list[tuple[str, int]] = []

    def add_request(self, request_id: str, prompt: dict[str, Any], params: Any) -> str:
        self.seen.append(list(prompt["prompt_token_ids"]))
        self.pending.append((request_id, params["max_tokens"]))
        return request_id

    def has_unfinished_requests(self) -> bool:
        return bool(self.pending)

    def step(self) -> list[Any]:
        done, self.pending = self.pending, []
        return [SimpleNamespace(request_id=rid, finished=True,
                                outputs=[SimpleNamespace(token_ids=list(range(n)))])
                for rid, n in done]


class RecordingVllm(VllmBackend):
    engine = RecordingEngine()
    timestamps = "frontend"

    def load(self):
        self._engine = RecordingVllm.engine
        self._SamplingParams = dict
        self._TokensPrompt = dict
        self._DELTA = self._FINAL_ONLY = None
        return SimpleNamespace(duration_s=0.0, device="cpu", dtype="bfloat16", parameters=None,
                               extra={})

    def close(self) -> None:
        pass


def test_backends_receive_identical_token_ids(demo_model_dir, monkeypatch):
    with FakeServer(token_delay_s=0.0) as server:
        study = validate_study(small_study(
            backends={"transformers": {"batch_size": [2]},
                      "vllm": {"max_num_seqs": [2], "mode": ["offline"]},
                      "openai-server": {"base_url": server.base_url}},
            workload={"num_prompts": 4, "input_tokens": 16, "output_tokens": OUTPUT_TOKENS,
                      "seed": 5},
            measurement={"cycles": 1, "idle_duration_s": 0, "threads": 1,
                         "warmup": {"min_runs": 0, "max_runs": 0}}))
        cells, _ = expand(study)
        assert sorted(c.backend for c in cells) == ["openai-server", "transformers", "vllm"]
        replacements = {"transformers": RecordingTransformers, "vllm": RecordingVllm}
        monkeypatch.setattr(protocol, "backend_class",
                            lambda name, settings=None: replacements.get(name)
                            or backend_class(name, settings))
        for cell in cells:
            config = json.loads(json.dumps({**cell.config, "cell_id": cell.cell_id}))
            out = CellRunner(config, str(demo_model_dir), log=lambda m: None).run()
            assert [r["status"] for r in out.runs] == ["ok"], out.runs
            assert {r["output_tokens"] for r in out.requests} == {OUTPUT_TOKENS}, cell.backend
        over_http = [r["body"]["prompt"] for r in server.requests]

    by_transformers = RecordingTransformers.seen
    by_vllm = RecordingVllm.engine.seen
    assert len(by_transformers) == len(by_vllm) == len(over_http) == 4
    assert all(len(p) == 16 for p in by_vllm)
    assert len({tuple(p) for p in by_vllm}) == 4  # four different passages, not one repeated
    assert by_transformers == by_vllm
    assert sorted(over_http) == sorted(by_vllm)  # HTTP requests may arrive in any order


@pytest.mark.parametrize("seed", [0, 1])
def test_prompts_depend_on_the_seed_only(demo_model_dir, seed):
    """The same seed gives the same ids whichever backend's cell builds them."""
    study = validate_study(small_study(
        backends={"transformers": {"batch_size": [1]}, "vllm": {"max_num_seqs": [4]}},
        workload={"num_prompts": 3, "input_tokens": 8, "output_tokens": 2, "seed": seed}))
    cells, _ = expand(study)
    prompts = [CellRunner({**c.config, "cell_id": c.cell_id}, str(demo_model_dir))._prompts()
               for c in cells]
    assert len(cells) == 2 and prompts[0] == prompts[1]
    other = validate_study(small_study(
        backends={"transformers": {"batch_size": [1]}},
        workload={"num_prompts": 3, "input_tokens": 8, "output_tokens": 2, "seed": seed + 10}))
    cell = expand(other)[0][0]
    assert CellRunner({**cell.config, "cell_id": cell.cell_id},
                      str(demo_model_dir))._prompts() != prompts[0]
