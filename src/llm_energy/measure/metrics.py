"""Per-request latencies, percentiles, the steady-state window and per-request energy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from llm_energy.backends.base import RequestRecord
from llm_energy.results.schema import PERCENTILES  # noqa: F401 - the registry's percentiles
from llm_energy.telemetry.integrate import coverage, integrate_power, max_gap_s  # noqa: F401


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ttft_ms(r: RequestRecord) -> float | None:
    return None if r.first_token_s is None else (r.first_token_s - r.arrival_s) * 1000.0


def e2e_ms(r: RequestRecord) -> float | None:
    return None if r.finish_s is None else (r.finish_s - r.arrival_s) * 1000.0


def itl_ms(r: RequestRecord) -> list[float]:
    t = r.token_times_s
    return [(b - a) * 1000.0 for a, b in zip(t, t[1:])]


def tpot_ms(r: RequestRecord) -> float | None:
    """Time per output token after the first (decode speed seen by one user):
    (E2E - TTFT) / (n - 1) with n the real output token count, whatever the timestamps."""
    n = max(r.output_tokens, len(r.token_times_s))
    if len(r.token_times_s) < 2 or n < 2:
        return None
    return (r.token_times_s[-1] - r.token_times_s[0]) * 1000.0 / (n - 1)


@dataclass
class SteadyState:
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def running_interval(r: RequestRecord) -> tuple[float, float] | None:
    """When a request occupies a slot of the running batch: from when the engine scheduled it
    (`scheduled_s`, where the backend knows it) or else its first token, to its last token.
    A queued request never counts as running: the client cannot see when vLLM schedules a
    request, but from its first token on it surely was. None without tokens."""
    begin = r.scheduled_s if r.scheduled_s is not None else r.first_token_s
    if begin is None or r.finish_s is None:
        return None
    return begin, r.finish_s


def batch_full_window(records: Sequence[RequestRecord], batch_limit: int) -> SteadyState | None:
    """This project's own window (`steady_state_rule: batch-full`, not ML.ENERGY's): from
    when the running requests (`running_interval`) first reach `batch_limit` to the last
    moment they still do. None when the batch never fills."""
    events: list[tuple[float, int]] = []
    for r in records:
        span = running_interval(r)
        if span is None:
            continue
        events.append((span[0], +1))
        events.append((span[1], -1))
    # At equal times, finishes come first: a slot freed and refilled is not "more than full".
    events.sort(key=lambda e: (e[0], e[1]))
    running = 0
    start: float | None = None
    end: float | None = None
    for t, delta in events:
        if delta < 0 and running >= batch_limit and start is not None:
            end = t
        running += delta
        if running >= batch_limit and start is None:
            start = t
    if start is None or end is None or end <= start:
        return None
    return SteadyState(start, end)


def tokens_in(records: Sequence[RequestRecord], start_s: float, end_s: float) -> int:
    return sum(1 for r in records for t in r.token_times_s if start_s < t <= end_s)


def split_energy_by_tokens(
    records: Sequence[RequestRecord],
    window_start_s: float,
    window_end_s: float,
    window_energy_j: float,
    power_profile: Sequence[tuple[float, float]] | None = None,
) -> list[float]:
    """Divide a window's energy among requests, interval by interval, in proportion to the
    tokens each processed in that interval: its prompt (prefill) with its first output
    token, one token per later step. Sum over requests == window energy.

    `power_profile` ((t_s, power_w) samples) weights time inside the window; without one,
    power is taken as constant over the window."""
    # Group token events by time: each event closes the interval since the previous event.
    weights_at: dict[float, list[tuple[int, float]]] = {}
    for index, r in enumerate(records):
        for k, t in enumerate(r.token_times_s):
            work = float(r.input_tokens + 1) if k == 0 else 1.0
            weights_at.setdefault(min(max(t, window_start_s), window_end_s), []).append((index, work))
    shares = [0.0] * len(records)
    if not weights_at or window_energy_j is None:
        return shares
    times = sorted(weights_at)
    edges = [window_start_s, *times]
    # The tail after the last token (e.g. teardown) goes with the last step's work.
    edges[-1] = window_end_s if times[-1] < window_end_s else times[-1]
    interval_energy = [
        _energy_between(edges[i], edges[i + 1], window_start_s, window_end_s, window_energy_j,
                        power_profile)
        for i in range(len(times))
    ]
    for t, e in zip(times, interval_energy):
        group = weights_at[t]
        total = sum(w for _, w in group)
        for index, w in group:
            shares[index] += e * w / total
    return shares


def _energy_between(a: float, b: float, w0: float, w1: float, window_energy_j: float,
                    profile: Sequence[tuple[float, float]] | None) -> float:
    if w1 <= w0:
        return 0.0
    if not profile or len(profile) < 2:
        return window_energy_j * (b - a) / (w1 - w0)
    whole = integrate_power(profile, w0, w1)
    if whole <= 0:
        return window_energy_j * (b - a) / (w1 - w0)
    return window_energy_j * integrate_power(profile, a, b) / whole
