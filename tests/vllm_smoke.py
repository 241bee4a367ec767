"""Smoke test of VllmBackend, run by tests/test_vllm_backend_real.py inside .venvs/vllm.

    .venvs/vllm/bin/python tests/vllm_smoke.py MODEL_DIR

One engine start (enforce_eager, small KV cache), then: more prompts than max_num_seqs, so
some requests queue; every request must get exactly the asked number of tokens with real,
ordered timestamps; both timestamp sources must give the same tokens. Then the output
policies on the same engine: per-request exact targets (EOS ignored), and natural outputs
(EOS allowed) with per-request caps. So that EOS comes up, the engine runs a copy of the demo
model whose generation config lists every third token id as an EOS (vLLM stops at them like at
the tokenizer's own; under exact policies `min_tokens` masks them). Prints one JSON line
starting with SMOKE_RESULT and exits non-zero on any failed check.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

MAX_NUM_SEQS = 2
NUM_PROMPTS = 5
INPUT_TOKENS = 12
OUTPUT_TOKENS = 8
#: Per-request targets (exact) and caps (natural) of the output-policy checks.
TARGETS = [3, 8, 5, 2, 6]
CAPS = [8, 8, 6, 8, 4]


def check(records, label: str) -> None:
    assert len(records) == NUM_PROMPTS, f"{label}: {len(records)} records"
    for record in records:
        where = f"{label}, request {record.request_id}"
        assert record.success, f"{where}: {record.error}"
        assert record.input_tokens == INPUT_TOKENS, where
        assert record.output_tokens == OUTPUT_TOKENS, f"{where}: {record.output_tokens} tokens"
        assert len(record.output_token_ids) == OUTPUT_TOKENS, where
        assert len(record.token_times_s) == OUTPUT_TOKENS, where
        assert record.first_token_s > record.arrival_s, f"{where}: first token before arrival"
        times = record.token_times_s
        assert all(b > a for a, b in zip(times, times[1:])), f"{where}: times not increasing {times}"
    # Requests beyond max_num_seqs wait for a slot: the last one starts after the first ends.
    assert records[-1].first_token_s > records[0].finish_s - 1e-9 or MAX_NUM_SEQS >= NUM_PROMPTS


def eos_model(model_dir: str, out: Path) -> tuple[str, set[int]]:
    """A copy of `model_dir` whose generation config's EOS ids are the tokenizer's EOS and
    every id divisible by 3."""
    copy = out / "model"
    shutil.copytree(model_dir, copy)
    config = json.loads((copy / "generation_config.json").read_text())
    eos = {int(config["eos_token_id"]), *range(3, int(json.loads(
        (copy / "config.json").read_text())["vocab_size"]), 3)}
    config["eos_token_id"] = sorted(eos)
    (copy / "generation_config.json").write_text(json.dumps(config))
    return str(copy), eos


def check_policies(backend, prompts) -> list[int]:
    """Exact per-request targets, then natural outputs under per-request caps; the natural
    lengths."""
    exact = backend.generate(prompts, TARGETS, True)
    for record, target in zip(exact, TARGETS):
        where = f"exact, request {record.request_id}"
        assert record.success, f"{where}: {record.error}"
        assert record.output_tokens == target == len(record.token_times_s), where
        assert record.target_output_tokens == target, where
    natural = backend.generate(prompts, CAPS, False)
    for record, cap in zip(natural, CAPS):
        where = f"natural, request {record.request_id}"
        ids = record.output_token_ids
        assert record.success, f"{where}: {record.error}"
        assert 1 <= record.output_tokens == len(ids) == len(record.token_times_s) <= cap, where
        assert record.target_output_tokens == cap, where
        # Ends at its first EOS (counted) or at its cap.
        assert not any(t in EOS_IDS for t in ids[:-1]), f"{where}: EOS inside {ids}"
        assert ids[-1] in EOS_IDS or len(ids) == cap, f"{where}: {ids}"
    lengths = [r.output_tokens for r in natural]
    assert any(n < cap for n, cap in zip(lengths, CAPS)), f"no output ended at EOS: {lengths}"
    return lengths


EOS_IDS: set[int] = set()


def main(model_dir: str) -> None:
    from llm_energy.backends.vllm_backend import VllmBackend

    tmp = tempfile.TemporaryDirectory()
    model_dir, eos = eos_model(model_dir, Path(tmp.name))
    EOS_IDS.update(eos)

    settings = {
        "max_num_seqs": MAX_NUM_SEQS,
        "dtype": "bfloat16",
        "quantization": None,
        "tensor_parallel_size": 1,
        "max_num_batched_tokens": None,
        "enable_prefix_caching": False,
        "enforce_eager": True,
        "max_model_len": 128,
        "gpu_memory_utilization": 0.9,
        "mode": "offline",
    }
    rng = random.Random(0)
    vocab = json.loads(Path(model_dir, "config.json").read_text())["vocab_size"]
    prompts = [[rng.randrange(3, vocab) for _ in range(INPUT_TOKENS)] for _ in range(NUM_PROMPTS)]

    backend = VllmBackend(model_dir, settings, "cpu")
    info = backend.load()
    try:
        assert info.duration_s > 0 and info.dtype == "bfloat16", info
        assert info.extra["token_timestamps"] == "engine-core step output time", info.extra
        engine_records = backend.generate(prompts, OUTPUT_TOKENS)
        check(engine_records, "engine clock")
        backend.timestamps = "frontend"
        start = time.perf_counter()
        frontend_records = backend.generate(prompts, OUTPUT_TOKENS)
        check(frontend_records, "frontend clock")
        assert all(r.arrival_s >= start for r in frontend_records)
        same = [r.output_token_ids for r in engine_records] == [
            r.output_token_ids for r in frontend_records]
        assert same, "greedy decoding gave different tokens on the second run"
        for record in engine_records + frontend_records:
            assert all(0 <= t < vocab for t in record.output_token_ids)
        backend.timestamps = "engine"
        natural_lengths = check_policies(backend, prompts)
    finally:
        backend.close()
        tmp.cleanup()
    assert backend._llm is None
    print("SMOKE_RESULT " + json.dumps({
        "load_s": round(info.duration_s, 2),
        "ttft_ms": [round(1000 * (r.first_token_s - r.arrival_s), 2) for r in engine_records],
        "kv_cache_blocks": info.extra.get("kv_cache_blocks"),
        "natural_lengths": natural_lengths, "caps": CAPS,
    }))


if __name__ == "__main__":
    main(sys.argv[1])
