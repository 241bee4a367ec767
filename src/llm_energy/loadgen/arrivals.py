"""Arrival processes: when each request is sent, as offsets in seconds from the start of a
cycle (first request at 0 for the generated processes). Seeded, so every cell of a study sees
the same schedule.

- closed: no schedule (all offsets 0); the client keeps `concurrency` requests in flight.
- poisson: exponential gaps of mean 1/rate.
- gamma: gaps from a gamma distribution with shape `burstiness` and scale
  1/(rate * burstiness), as vLLM's `bench serve` defines it (vllm/benchmarks/serve.py,
  `get_request`): the mean gap is 1/rate whatever the burstiness; burstiness 1 is Poisson,
  below 1 burstier, above 1 more regular.
- constant: gaps of exactly 1/rate.
- trace: offsets read from a file (`read_trace`).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path


def poisson_offsets_s(num_requests: int, rate_per_s: float, seed: int) -> list[float]:
    """Send times relative to the start: the first request at 0, then exponential gaps of mean
    1/rate. The same seed gives the same schedule."""
    rng = random.Random(seed)
    offsets, t = [], 0.0
    for index in range(num_requests):
        if index:
            t += rng.expovariate(rate_per_s)
        offsets.append(t)
    return offsets


def gamma_offsets_s(num_requests: int, rate_per_s: float, burstiness: float,
                    seed: int) -> list[float]:
    """First request at 0, then gamma gaps of shape `burstiness`, mean 1/rate seconds."""
    rng = random.Random(seed)
    scale = 1.0 / (rate_per_s * burstiness)
    offsets, t = [], 0.0
    for index in range(num_requests):
        if index:
            t += rng.gammavariate(burstiness, scale)
        offsets.append(t)
    return offsets


def constant_offsets_s(num_requests: int, rate_per_s: float) -> list[float]:
    return [index / rate_per_s for index in range(num_requests)]


def read_trace(path: str | Path, num_requests: int) -> list[float]:
    """The first `num_requests` offsets (seconds, >= 0, non-decreasing) of a trace file: a JSON
    list of numbers, or text/CSV with one offset per line in the first column (a header line
    is skipped). Raises ValueError naming the file and line when it is unreadable, unsorted,
    negative or too short."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read trace {path}: {exc}") from None
    entries: list[tuple[str, float]] = []  # (where, offset)
    if text.lstrip().startswith("["):
        try:
            entries = [(f"item {i + 1}", float(v)) for i, v in enumerate(json.loads(text))]
        except (ValueError, TypeError) as exc:
            raise ValueError(f"trace {path} is not a JSON list of numbers: {exc}") from None
    else:
        seen_line = False
        for number, line in enumerate(text.splitlines(), start=1):
            cell = line.split(",")[0].strip()
            if not cell:
                continue
            try:
                entries.append((f"line {number}", float(cell)))
            except ValueError:
                if seen_line:  # only a first non-numeric line is a header
                    raise ValueError(f"trace {path} line {number}: {cell!r} is not a number of "
                                     "seconds") from None
            seen_line = True
    lines = [where for where, _ in entries]
    values = [value for _, value in entries]
    for i, value in enumerate(values):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"trace {path} {lines[i]}: offset {value} is not >= 0")
        if i and value < values[i - 1]:
            raise ValueError(f"trace {path} {lines[i]}: offsets are not sorted "
                             f"({value} after {values[i - 1]})")
    if len(values) < num_requests:
        raise ValueError(f"trace {path} has {len(values)} offsets, fewer than the "
                         f"{num_requests} requests")
    return values[:num_requests]


def arrival_offsets_s(arrival: str, num_requests: int, *, seed: int = 0,
                      rate_per_s: float | None = None, burstiness: float | None = None,
                      trace_path: str | None = None) -> list[float]:
    """Offsets of `num_requests` requests for one arrival process (the `workload` keys)."""
    if arrival == "closed":
        return [0.0] * num_requests
    if arrival == "trace":
        if trace_path is None:
            raise ValueError("arrival 'trace' needs trace_path")
        return read_trace(trace_path, num_requests)
    if rate_per_s is None or rate_per_s <= 0:
        raise ValueError(f"arrival {arrival!r} needs request_rate_per_s > 0")
    if arrival == "poisson":
        return poisson_offsets_s(num_requests, rate_per_s, seed)
    if arrival == "gamma":
        if burstiness is None or burstiness <= 0:
            raise ValueError("arrival 'gamma' needs burstiness > 0")
        return gamma_offsets_s(num_requests, rate_per_s, burstiness, seed)
    if arrival == "constant":
        return constant_offsets_s(num_requests, rate_per_s)
    raise ValueError(f"unknown arrival {arrival!r}")


def repeat_schedule(offsets_s: Sequence[float], count: int) -> list[float]:
    """`count` arrival offsets (s) from one repetition's schedule `offsets_s` (sorted, >= 0):
    the schedule replayed back to back, repetition r shifted by r x its period, the period
    being its last offset plus its mean gap (last offset / (n - 1); the first offset for one
    request). A cycle that repeats its workload R times sends R x n requests this way, so every
    repetition keeps the configured arrival pattern. Raises ValueError on an empty schedule."""
    if not offsets_s:
        raise ValueError("an empty arrival schedule cannot be repeated")
    n = len(offsets_s)
    if count <= n:
        return list(offsets_s[:count])
    last = float(offsets_s[-1])
    gap = last / (n - 1) if n > 1 else last
    period = last + gap if last + gap > 0 else 1e-3
    return [float(offsets_s[i % n]) + (i // n) * period for i in range(count)]
