"""`workload.output_policy` on the transformers backend with the random-weight demo model.

EOS is forced deterministically: a first run (natural, the demo model's own EOS never comes
up) gives each prompt's greedy tokens; a copy of the model whose EOS is a token that run
produced early for some prompts then must end exactly there. Greedy decoding of one row does
not depend on the EOS id (no logits processor under `natural`), so every expected length is
computed from the first run by hand: the first occurrence of the EOS token (counted) or the
cap. Under `fixed`, a lognormal distribution gives each request its own target, honoured
exactly even when requests of different targets share a batch."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import small_study

from llm_energy.backends.transformers_backend import TransformersBackend
from llm_energy.measure.protocol import CellRunner
from llm_energy.study.config import validate_study
from llm_energy.study.matrix import expand
from llm_energy.study.workload_spec import LognormalLengths
from llm_energy.workload.build import make_workload
from llm_energy.workload.lengths import STREAM_OUTPUT, rng, sample_lengths

CAP = 12
NUM_PROMPTS = 6


def _generate(model_dir, prompts, lengths, exact, batch_size=3):
    backend = TransformersBackend(str(model_dir), {"batch_size": batch_size,
                                                   "dtype": "float32"}, "cpu")
    backend.load()
    try:
        return backend.generate(prompts, lengths, exact)
    finally:
        backend.close()


def _expected_length(tokens, eos, cap):
    return tokens.index(eos) + 1 if eos in tokens[:cap] else cap


@pytest.fixture(scope="module")
def corpus_prompts(demo_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(demo_model_dir))
    return make_workload({"num_prompts": NUM_PROMPTS, "input_tokens": 8, "output_tokens": CAP,
                          "seed": 5}, tokenizer).prompts


@pytest.fixture(scope="module")
def eos_model(demo_model_dir, corpus_prompts, tmp_path_factory):
    """(model dir whose EOS is a token the first run produced, that token, the first run's
    tokens per prompt)."""
    first = _generate(demo_model_dir, corpus_prompts, CAP, exact=False)
    tokens = [r.output_token_ids for r in first]
    own_eos = json.loads((demo_model_dir / "config.json").read_text())["eos_token_id"]
    assert all(len(t) == CAP and own_eos not in t for t in tokens), tokens
    # The earliest-produced token that is new in its row, chosen in the middle of row 0.
    eos = next(t for k, t in enumerate(tokens[0]) if k >= 2 and t not in tokens[0][:k])
    copy = tmp_path_factory.mktemp("eos") / "model"
    shutil.copytree(demo_model_dir, copy)
    for name in ("config.json", "generation_config.json"):
        data = json.loads((copy / name).read_text())
        data["eos_token_id"] = eos
        (copy / name).write_text(json.dumps(data))
    return copy, eos, tokens


def test_natural_outputs_end_at_eos_or_at_each_requests_own_cap(eos_model, corpus_prompts):
    model_dir, eos, tokens = eos_model
    caps = [CAP, 5, CAP, 3, CAP, 7]   # per request; rows of one batch differ
    records = _generate(model_dir, corpus_prompts, caps, exact=False)
    want = [min(_expected_length(t, eos, CAP), cap) for t, cap in zip(tokens, caps)]
    assert [r.output_tokens for r in records] == want
    assert [r.output_token_ids for r in records] == [t[:n] for t, n in zip(tokens, want)]
    assert records[0].output_token_ids[-1] == eos and want[0] < CAP
    assert [len(r.token_times_s) for r in records] == want
    assert all(r.success for r in records)
    assert [r.target_output_tokens for r in records] == caps
    assert len(set(want)) > 1 and any(n < cap for n, cap in zip(want, caps))
    # The same model under an exact policy: EOS ignored, every request its full target.
    exact = _generate(model_dir, corpus_prompts, caps, exact=True)
    assert [r.output_tokens for r in exact] == caps and all(r.success for r in exact)


def test_fixed_lognormal_targets_are_honoured_per_request(demo_model_dir, corpus_prompts):
    policy = LognormalLengths(distribution="lognormal", mean=8, std=5, min=2, max=20)
    targets = [int(n) for n in sample_lengths(policy, NUM_PROMPTS, rng(1, STREAM_OUTPUT))]
    assert len(set(targets)) >= 3, targets     # the batches mix different targets
    records = _generate(demo_model_dir, corpus_prompts, targets, exact=True)
    assert [r.output_tokens for r in records] == targets
    assert [len(r.output_token_ids) for r in records] == targets
    assert [len(r.token_times_s) for r in records] == targets
    assert all(r.success for r in records)


def _cell(model_dir, **workload):
    study = validate_study(small_study(
        backends={"transformers": {"batch_size": [3], "dtype": ["float32"]}},
        workload={"num_prompts": NUM_PROMPTS, "input_tokens": 8, "seed": 5, **workload},
        measurement={"cycles": 1, "idle_duration_s": 0, "threads": 1,
                     "warmup": {"min_runs": 1, "max_runs": 1}}))
    (cell,), _ = expand(study)
    config = json.loads(json.dumps({**cell.config, "cell_id": cell.cell_id}))
    return CellRunner(config, str(model_dir), log=lambda m: None).run()


def test_natural_cell_counts_the_tokens_produced(eos_model):
    """Through the protocol: requests.parquet rows keep each request's length and cap, and
    J/token divides the cycle's energy by the tokens actually produced."""
    model_dir, eos, tokens = eos_model
    out = _cell(model_dir, output_tokens=CAP, output_policy="natural")
    (run,) = out.runs
    assert run["status"] == "ok", run
    want = [_expected_length(t, eos, CAP) for t in tokens] * run["repetitions"]
    assert [r["output_tokens"] for r in out.requests] == want
    assert {r["target_output_tokens"] for r in out.requests} == {CAP}
    assert run["output_tokens"] == sum(want) < CAP * len(want)
    assert run["energy_per_output_token_j"] == pytest.approx(run["total_energy_j"] / sum(want))
    assert not any("output tokens instead of" in w for w in run["warnings"])


def test_fixed_lognormal_cell_gives_each_request_its_target(demo_model_dir):
    lengths = {"distribution": "lognormal", "mean": 8, "std": 5, "min": 2, "max": 20}
    out = _cell(demo_model_dir, output_tokens=lengths)
    (run,) = out.runs
    assert run["status"] == "ok", run
    drawn = sample_lengths(LognormalLengths(**lengths), NUM_PROMPTS, rng(5, STREAM_OUTPUT))
    want = [int(n) for n in np.tile(drawn, run["repetitions"])]
    assert [r["target_output_tokens"] for r in out.requests] == want
    assert [r["output_tokens"] for r in out.requests] == want
    assert run["output_tokens"] == sum(want)
    assert all(r["success"] for r in out.requests)


def test_dataset_policy_cell_gives_each_request_its_records_reply_length(demo_model_dir,
                                                                         tmp_path):
    """`output_tokens: dataset` (policy `dataset`): each request produces exactly its record's
    reply length in tokens, counted here with the model's tokenizer."""
    from transformers import AutoTokenizer

    path = tmp_path / "chat.jsonl"
    rows = [{"prompt": "a question " + "about energy " * i, "answer": "watt " * (2 + 3 * i)}
            for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = {"path": str(path), "reply_field": "answer", "chat_template": False}
    out = _cell(demo_model_dir, num_prompts=4, input_tokens="dataset", output_tokens="dataset",
                dataset=dataset)
    (run,) = out.runs
    assert run["status"] == "ok", run
    tokenizer = AutoTokenizer.from_pretrained(str(demo_model_dir))
    replies = [len(tokenizer(r["answer"], add_special_tokens=False)["input_ids"]) for r in rows]
    prompts = [len(tokenizer(r["prompt"])["input_ids"]) for r in rows]
    assert len(set(replies)) == len(set(prompts)) == 4
    # Requests come in the seeded sample's order: each is matched to its record by its
    # prompt length (distinct here).
    reply_of = dict(zip(prompts, replies))
    assert len(out.requests) == 4 * run["repetitions"]
    for r in out.requests:
        assert r["success"] and r["output_tokens"] == r["target_output_tokens"]
        assert r["output_tokens"] == reply_of[r["input_tokens"]]


def test_a_workload_file_built_for_another_policy_is_refused(demo_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from llm_energy.workload.build import build_workload

    tokenizer = AutoTokenizer.from_pretrained(str(demo_model_dir))
    path = build_workload({"num_prompts": 2, "input_tokens": 8, "output_tokens": 4,
                           "output_policy": "natural"}, tokenizer, tmp_path / "w.parquet")
    assert path.output_policy == "natural"
    study = validate_study(small_study(workload={"num_prompts": 2, "input_tokens": 8,
                                                 "output_tokens": 4}))
    (cell, *_), _ = expand(study)
    config = {**cell.config, "cell_id": cell.cell_id, "workload_file": str(tmp_path / "w.parquet")}
    runner = CellRunner(json.loads(json.dumps(config)), str(demo_model_dir), log=lambda m: None)
    with pytest.raises(ValueError, match="built for output_policy 'natural', the cell asks "
                                         "for 'fixed'"):
        runner._prompts()
