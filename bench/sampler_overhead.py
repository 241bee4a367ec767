"""CPU cost of the background telemetry sampler, as a fraction of one core.

Two measurements per rate, each over a fixed sleep of the main thread:
  thread  - CPU time of the sampler thread itself (time.thread_time inside the thread):
            what the sampler costs, unaffected by the rest of the process;
  process - process CPU time with the sampler minus without it (A/B alternated, so drifts
            in machine load hit both arms): includes wake-ups and GIL hand-offs.
Repeats are alternated A/B and summarised by the median. The probes are the ones a cell
uses here: the CPU probe, plus one NVML probe per visible GPU where NVML finds GPUs, and the
energy meter's rate-limited counter poll (as in a cell).

    .venv/bin/python bench/sampler_overhead.py            # 10 and 100 Hz, 5 x 3 s
    .venv/bin/python bench/sampler_overhead.py --quick    # smoke: 10 Hz, 1 x 0.5 s

Target: < 1% of one core at 10 Hz. Exit status 1 if the 10 Hz thread cost misses it."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from llm_energy.telemetry.sampler import Sampler, default_probes

TARGET_FRACTION_AT_10HZ = 0.01


def probes() -> tuple[list, list, str]:
    """(probes, pollers, label) as a cell on this machine would have them."""
    from llm_energy.telemetry.meters import detect

    try:
        from llm_energy.telemetry.meters.nvml import (
            job_gpus,
            load_nvml,
            visible_gpu_ids,
        )

        nvml = load_nvml()
        gpus = job_gpus(nvml, visible_gpu_ids()[0])
        meter = detect("cuda", "auto", 10.0, nvml=nvml).meter
        return (default_probes("cuda", None, gpus, nvml), [meter.poll],
                f"cpu + {len(gpus)} NVML GPU(s) + {meter.sources} poll")
    except Exception:  # no GPU: the CPU probe alone, as on CPU cells
        meter = detect("cpu", "auto", 10.0).meter
        return default_probes("cpu", 10.0), [meter.poll], f"cpu + {meter.sources} poll"


def one_run(rate_hz: float | None, duration_s: float) -> tuple[float, float | None]:
    """(process CPU seconds, sampler-thread CPU seconds) over a `duration_s` sleep."""
    sampler = None
    if rate_hz is not None:
        probe_list, pollers, _ = probes()
        sampler = Sampler(probe_list, rate_hz, pollers=pollers)
    cpu0 = time.process_time()
    if sampler:
        sampler.start()
    time.sleep(duration_s)
    if sampler:
        sampler.stop()
    return time.process_time() - cpu0, (sampler.thread_cpu_s if sampler else None)


def measure(rates: list[float], repeats: int, duration_s: float) -> dict:
    results = {}
    for rate in rates:
        thread, delta = [], []
        for _ in range(repeats):
            base, _ = one_run(None, duration_s)         # A
            with_cpu, thread_s = one_run(rate, duration_s)  # B
            thread.append(thread_s / duration_s)
            delta.append((with_cpu - base) / duration_s)
        results[rate] = {
            "thread_fraction_of_core_median": statistics.median(thread),
            "process_delta_fraction_of_core_median": statistics.median(delta),
            "thread_fraction_of_core_all": thread,
            "repeats": repeats, "duration_s": duration_s,
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 Hz, 1 x 0.5 s")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--duration-s", type=float, default=3.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    rates, repeats, duration_s = ([10.0], 1, 0.5) if args.quick else ([10.0, 100.0],
                                                                       args.repeats, args.duration_s)
    label = probes()[2]
    results = measure(rates, repeats, duration_s)
    print(f"sampler overhead, probes: {label}; {repeats} x {duration_s:g} s per arm, "
          "A/B alternated, medians (fraction of one core)")
    print(f"{'rate_hz':>8} {'thread':>10} {'process_delta':>14}")
    for rate, r in results.items():
        print(f"{rate:8.0f} {r['thread_fraction_of_core_median']:10.4%} "
              f"{r['process_delta_fraction_of_core_median']:14.4%}")
    if args.json:
        args.json.write_text(json.dumps({"probes": label, "results": results}, indent=2))
    ok = results[10.0]["thread_fraction_of_core_median"] < TARGET_FRACTION_AT_10HZ
    print(f"10 Hz target < {TARGET_FRACTION_AT_10HZ:.0%} of one core: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
