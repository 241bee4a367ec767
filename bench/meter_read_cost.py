"""Cost of one energy read for each source this machine has (median of many reads).

    .venv/bin/python bench/meter_read_cost.py [--reads 2000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from llm_energy.telemetry.meters import EstimateMeter, RaplMeter, detect
from llm_energy.telemetry.meters.rapl import RaplUnavailable


def time_reads(read, reads: int) -> dict[str, float]:
    samples = []
    for _ in range(reads):
        start = time.perf_counter_ns()
        read()
        samples.append(time.perf_counter_ns() - start)
    return {"median_us": statistics.median(samples) / 1000,
            "p99_us": sorted(samples)[int(0.99 * (len(samples) - 1))] / 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    reads = 50 if args.quick else args.reads
    meters = {"estimate": EstimateMeter(10.0)}
    try:
        meters["rapl"] = RaplMeter.probe()
    except RaplUnavailable as exc:
        print(f"rapl: not available ({exc})")
    try:
        gpu = detect("cuda", "auto", 10.0)
    except RuntimeError as exc:  # a cuda study refuses to fall back to the CPU estimate
        print(f"nvml: not available ({exc})")
    else:
        meters["+".join(sorted(set(gpu.meter.sources.values())))] = gpu.meter
    results = {}
    for name, meter in meters.items():
        results[name] = time_reads(meter.read_j, reads)
        print(f"{name}: {results[name]['median_us']:.1f} us per read (median of {reads}), "
              f"p99 {results[name]['p99_us']:.1f} us")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
