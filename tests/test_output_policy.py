"""`workload.output_policy` (fixed, dataset, natural): validation, cell identity, the length
check every backend applies, the mapping onto vLLM's offline engine (a fake engine that
honours max_tokens, min_tokens and ignore_eos as vLLM does), the OpenAI client's payload
(the fake server honours the same fields) and ML.ENERGY's length-cap flag."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from conftest import small_study

from llm_energy.backends.base import RequestRecord, check_output_lengths, per_request
from llm_energy.measure import mlenergy
from llm_energy.study.config import ConfigError, validate_study
from llm_energy.study.identity import identity
from llm_energy.study.matrix import expand
from llm_energy.study.workload_spec import WorkloadSpec, exact_outputs, workload_key

# ---------------------------------------------------------------- config


def _replies(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"question {i}", "answer": "yes " * (i + 1)})
                            + "\n" for i in range(4)))
    return {"path": str(path), "reply_field": "answer"}


def _refused(workload):
    with pytest.raises(ConfigError) as info:
        validate_study(small_study(workload=workload))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_policy_defaults_and_implications(tmp_path):
    assert WorkloadSpec().output_policy == "fixed" and WorkloadSpec().exact_outputs
    data = _replies(tmp_path)
    # output_tokens: dataset and output_policy: dataset say the same; each implies the other.
    by_tokens = WorkloadSpec(num_prompts=2, output_tokens="dataset", dataset=data)
    by_policy = WorkloadSpec(num_prompts=2, output_policy="dataset", dataset=data)
    assert by_tokens == by_policy
    assert (by_policy.output_policy, by_policy.output_tokens) == ("dataset", "dataset")
    natural = WorkloadSpec(output_policy="natural",
                           output_tokens={"distribution": "uniform", "min": 4, "max": 9})
    assert not natural.exact_outputs and natural.output_tokens.max == 9
    assert [exact_outputs(p) for p in ("fixed", "dataset", "natural")] == [True, True, False]


def test_contradictions_and_nonsense_are_refused_with_one_line_naming_the_key(tmp_path):
    data = _replies(tmp_path)
    assert "output_policy 'dataset'" in _refused(
        {"output_policy": "dataset", "output_tokens": 8, "dataset": data})
    assert "contradicts output_policy 'fixed'" in _refused(
        {"output_policy": "fixed", "output_tokens": "dataset", "dataset": data})
    assert "output_policy 'natural'" in _refused(
        {"output_policy": "natural", "output_tokens": "dataset", "dataset": data})
    message = _refused({"output_policy": "eos"})
    assert message.startswith("invalid value for 'workload.output_policy'"), message
    # The dataset policy still needs a dataset with replies.
    assert "needs a workload.dataset" in _refused({"output_policy": "dataset"})


def test_policy_changes_cell_identity_and_workload_file_but_fixed_is_the_default():
    def cells(**workload):
        study = validate_study(small_study(workload={"num_prompts": 4, "input_tokens": 16,
                                                     "output_tokens": 8, **workload}))
        return expand(study)[0]

    default, fixed, natural = cells(), cells(output_policy="fixed"), cells(output_policy="natural")
    assert [c.cell_id for c in default] == [c.cell_id for c in fixed]
    assert "output_policy" not in identity(default[0].config)["workload"]
    assert identity(natural[0].config)["workload"]["output_policy"] == "natural"
    assert {c.cell_id for c in natural}.isdisjoint(c.cell_id for c in default)
    spec = {k: v for k, v in default[0].config["workload"].items() if k in WorkloadSpec.model_fields}
    model = default[0].config["model"]
    without = {k: v for k, v in spec.items() if k != "output_policy"}
    assert workload_key(spec, model) == workload_key(without, model)  # files built before
    assert workload_key({**spec, "output_policy": "natural"}, model) != workload_key(spec, model)


# ---------------------------------------------------------------- length check


def _records(lengths):
    return [RequestRecord(i, 4, n, 0.0) for i, n in enumerate(lengths)]


def test_length_check_is_exact_only_under_exact_policies():
    exact = _records([5, 4, 7])
    check_output_lengths(exact, [5, 5, 7], True, "engine")
    assert [r.success for r in exact] == [True, False, True]
    assert exact[1].error == "engine returned 4 tokens, expected 5"
    assert [r.target_output_tokens for r in exact] == [5, 5, 7]
    natural = _records([1, 4, 0, 8, 9])
    check_output_lengths(natural, 8, False, "engine")
    # 1..cap tokens succeed; none, or more than the cap, fail.
    assert [r.success for r in natural] == [True, True, False, True, False]
    assert natural[4].error == "engine returned 9 tokens, expected 1 to 8 (the cap)"
    assert [r.target_output_tokens for r in natural] == [8] * 5
    with pytest.raises(ValueError, match="2 output lengths for 3 prompts"):
        per_request([1, 2], 3)


def test_mlenergy_length_cap_flag_counts_each_request_against_its_own_cap():
    def flags(lengths, caps):
        checks = mlenergy.failed_checks(steady_duration_s=60.0, avg_batch=None, max_num_seqs=1,
                                        steady_energy_per_token_j=None, output_tokens_per_s=1.0,
                                        output_lengths=lengths, max_output_tokens=caps)
        return [c for c in checks if c.name == "output_length"]

    # Caps 8, 4, 16, 4: requests 1 and 3 are at theirs: 2/4 = 50% >= 30%.
    (check,) = flags([3, 4, 10, 4], [8, 4, 16, 4])
    assert check.message == "50.0% of outputs hit their max_output_tokens cap"
    assert flags([3, 3, 10, 4], [8, 4, 16, 16]) == []          # 0 of 4 at the cap
    assert flags([4, 4, 4], None) == []                         # exact lengths: not judged
    (check,) = flags([4, 2, 4], 4)                              # one cap for all: 2/3
    assert check.message == "66.7% of outputs hit max_output_tokens=4"


# ---------------------------------------------------------------- vLLM offline (fake engine)

EOS = 2


class FakeVllmEngine:
    """One token per step per request, token k of a prompt = 100 + prompt[0] + k, except that
    at `eos_at[prompt[0]]` (1-based) the model emits EOS. Stops as vLLM does: at max_tokens,
    or at EOS once min_tokens are out unless ignore_eos. `overrun`: one token too many."""

    def __init__(self, eos_at, overrun=False):
        self.eos_at, self.overrun = eos_at, overrun
        self.requests = {}

    def add_request(self, given, prompt, params):
        self.requests[given] = {"prompt": prompt["prompt_token_ids"], "params": params, "out": 0,
                                "done": False}
        return given + "-internal"

    def has_unfinished_requests(self):
        return any(not r["done"] for r in self.requests.values())

    def step(self):
        outputs = []
        for given, r in self.requests.items():
            if r["done"]:
                continue
            p = r["params"]
            k = r["out"] + 1
            eos = self.eos_at.get(r["prompt"][0]) == k
            token = EOS if eos else 100 + r["prompt"][0] + k
            r["out"] = k
            stop = k >= p.max_tokens + (1 if self.overrun else 0) \
                or (eos and not p.ignore_eos and k >= p.min_tokens)
            r["done"] = stop
            outputs.append(SimpleNamespace(request_id=given, finished=stop,
                                           outputs=[SimpleNamespace(token_ids=[token])]))
        return outputs


def _fake_vllm(model_dir, engine):
    from llm_energy.backends.vllm_backend import VllmBackend

    backend = VllmBackend(str(model_dir), {"max_model_len": 256}, "cpu")
    backend._engine, backend._engine_clock_usable = engine, False
    backend._SamplingParams = lambda **kwargs: SimpleNamespace(**kwargs)
    backend._TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    backend._DELTA, backend._FINAL_ONLY = "delta", "final"
    return backend


def test_vllm_offline_gets_per_request_lengths_and_eos_only_under_natural(demo_model_dir):
    prompts = [[10, 1], [20, 1], [30, 1]]
    engine = FakeVllmEngine(eos_at={10: 3, 20: 9})
    exact = _fake_vllm(demo_model_dir, engine).generate(prompts, [4, 6, 2], exact=True)
    params = [r["params"] for r in engine.requests.values()]
    assert [(p.max_tokens, p.min_tokens, p.ignore_eos) for p in params] == [
        (4, 4, True), (6, 6, True), (2, 2, True)]
    # EOS ignored: every request exactly its own target.
    assert [r.output_tokens for r in exact] == [4, 6, 2] and all(r.success for r in exact)
    assert [len(r.token_times_s) for r in exact] == [4, 6, 2]
    assert exact[0].output_token_ids == [111, 112, EOS, 114]

    engine = FakeVllmEngine(eos_at={10: 3, 20: 9})
    natural = _fake_vllm(demo_model_dir, engine).generate(prompts, [8, 5, 2], exact=False)
    params = [r["params"] for r in engine.requests.values()]
    assert [(p.max_tokens, p.min_tokens, p.ignore_eos) for p in params] == [
        (8, 0, False), (5, 0, False), (2, 0, False)]
    # Request 0 ends at its EOS (counted), 1 and 2 at their caps (EOS at 9 > cap 5).
    assert [r.output_tokens for r in natural] == [3, 5, 2]
    assert natural[0].output_token_ids == [111, 112, EOS]
    assert [r.target_output_tokens for r in natural] == [8, 5, 2]
    assert all(r.success for r in natural)

    over = _fake_vllm(demo_model_dir, FakeVllmEngine({}, overrun=True)).generate(
        prompts[:1], 3, exact=False)
    assert not over[0].success and "returned 4 tokens, expected 1 to 3 (the cap)" in over[0].error


# ---------------------------------------------------------------- OpenAI client (fake server)


@pytest.mark.parametrize("policy", ["fixed", "dataset", "natural"])
def test_client_payload_and_lengths_under_each_policy(policy):
    from fakes.openai_server import FakeServer

    from llm_energy.loadgen.client import Endpoint, LoadSpec, run_load

    prompts = [[11, 5, 6], [12, 5, 6], [13, 5, 6]]
    targets = [6, 4, 3]
    exact = exact_outputs(policy)
    # The "model" emits EOS as token 2 of prompt 11 and token 9 of prompt 12.
    with FakeServer(token_delay_s=0.001, eos_at={11: 2, 12: 9}) as server:
        result = run_load(Endpoint(server.base_url, "fake-model"), prompts, targets,
                          LoadSpec(), exact)
        bodies = [r["body"] for r in server.requests_by_prompt(prompts)]
    assert [b["max_tokens"] for b in bodies] == targets
    if exact:
        assert [b["min_tokens"] for b in bodies] == targets
        assert all(b["ignore_eos"] is True for b in bodies)
        assert [r.output_tokens for r in result.records] == targets
    else:
        assert all("min_tokens" not in b and "ignore_eos" not in b for b in bodies)
        assert [r.output_tokens for r in result.records] == [2, 4, 3]   # EOS, cap, cap
    assert all(b["return_token_ids"] is True for b in bodies)
    assert all(r.success for r in result.records), [r.error for r in result.records]
    assert [r.target_output_tokens for r in result.records] == targets
