"""Harness overhead: tokens/s of the measured path vs a bare backend loop, side by side.

A (bare): the library's own batch call on the same model, prompts and batch size:
  transformers `model.generate` (no streamer), or vLLM `LLM.generate`.
B (measured): what a cycle runs: the backend's `generate` (per-token timestamps) inside an
  energy window, with the background sampler running at the configured rate.
A and B alternate on one loaded model; the result is the median of B/A tokens/s ratios.

    .venv/bin/python bench/harness_overhead.py --backend transformers
    .venvs/vllm/bin/python bench/harness_overhead.py --backend vllm
    ... --quick       (smoke mode: tiny model, 2 repeats; checks the path, not the target)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from llm_energy.backends import backend_class
from llm_energy.models.demo import build_demo_model
from llm_energy.study.config import DemoModelSpec, WorkloadConfig
from llm_energy.telemetry.meters import detect
from llm_energy.telemetry.sampler import Sampler, default_probes
from llm_energy.workload.prompts import build_prompts


def bare_transformers(backend, prompts, max_new_tokens, batch_size):
    import torch

    model = backend.model
    for first in range(0, len(prompts), batch_size):
        ids = torch.tensor(prompts[first:first + batch_size], device=backend.device)
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                           max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                           do_sample=False, pad_token_id=backend.eos_token_id or 0)


def bare_vllm(backend, prompts, max_new_tokens, batch_size):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, min_tokens=max_new_tokens,
                            ignore_eos=True, detokenize=False)
    backend._llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                         use_tqdm=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--sampler-hz", type=float, default=10.0)
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.prompts, args.output_tokens, args.batch_size = 2, 4, 8, 4
        spec = DemoModelSpec(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2,
                             num_kv_heads=2, vocab_size=1000)
    else:
        spec = DemoModelSpec()  # the demo study's tiny-llama (config/examples/cpu-demo.yaml)
    workdir = Path(tempfile.mkdtemp(prefix="harness-overhead-"))
    model_dir = build_demo_model(spec, workdir / "model")
    if args.backend == "transformers":
        settings = {"batch_size": args.batch_size, "dtype": "bfloat16"}
        bare = bare_transformers
    else:
        settings = {"max_num_seqs": args.batch_size, "dtype": "bfloat16", "enforce_eager": True,
                    "max_model_len": 512, "gpu_memory_utilization": 0.5}
        bare = bare_vllm
    backend = backend_class(args.backend)(str(model_dir), settings, "cpu")
    backend.load()
    from transformers import AutoTokenizer

    prompts = build_prompts(AutoTokenizer.from_pretrained(model_dir),
                            WorkloadConfig(num_prompts=args.prompts, input_tokens=32,
                                           output_tokens=args.output_tokens))
    meter = detect("cpu", "auto", 10.0).meter
    tokens = args.prompts * args.output_tokens

    def measured():
        sampler = Sampler(default_probes("cpu", 10.0), args.sampler_hz).start()
        meter.begin_window("bench")
        start = time.perf_counter()
        sampler.sample_now(start)
        backend.generate(prompts, args.output_tokens)
        backend.synchronize()
        end = time.perf_counter()
        sampler.sample_now(end)
        meter.end_window("bench")
        sampler.stop()
        return end - start

    def plain():
        start = time.perf_counter()
        bare(backend, prompts, args.output_tokens, args.batch_size)
        return time.perf_counter() - start

    plain(), measured()  # warm both paths
    ratios, bare_tps, measured_tps = [], [], []
    for i in range(args.repeats):
        order = (plain, measured) if i % 2 == 0 else (measured, plain)
        times = {f.__name__: f() for f in order}
        bare_tps.append(tokens / times["plain"])
        measured_tps.append(tokens / times["measured"])
        ratios.append(measured_tps[-1] / bare_tps[-1])
        print(f"repeat {i + 1}/{args.repeats}: bare {bare_tps[-1]:.1f} tok/s, measured "
              f"{measured_tps[-1]:.1f} tok/s, ratio {ratios[-1]:.3f}", flush=True)
    backend.close()
    result = {"backend": args.backend, "repeats": args.repeats, "batch_size": args.batch_size,
              "prompts": args.prompts, "output_tokens": args.output_tokens,
              "sampler_hz": args.sampler_hz, "ratio_median": statistics.median(ratios),
              "bare_tokens_per_s_median": statistics.median(bare_tps),
              "measured_tokens_per_s_median": statistics.median(measured_tps), "ratios": ratios}
    verdict = "met" if result["ratio_median"] >= 0.99 else (
        "within the 0.97 floor" if result["ratio_median"] >= 0.97 else "MISSED")
    print(f"{args.backend}: measured/bare tokens/s median ratio {result['ratio_median']:.3f} "
          f"(target >= 0.99, floor 0.97: {verdict})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
