"""Power-sample arithmetic shared by meters and the protocol: trapezoidal integration and
sampling coverage. Times in seconds, power in watts, energy in joules."""

from __future__ import annotations

from collections.abc import Sequence


def integrate_power(profile: Sequence[tuple[float, float]], a: float, b: float) -> float:
    """Trapezoidal energy (J) of (t_s, power_w) samples between a and b, interpolating at
    the edges and holding the first/last value outside the sampled range."""
    if b <= a or not profile:
        return 0.0
    pts = sorted(profile)

    def power_at(t: float) -> float:
        if t <= pts[0][0]:
            return pts[0][1]
        if t >= pts[-1][0]:
            return pts[-1][1]
        lo, hi = 0, len(pts) - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if pts[mid][0] <= t:
                lo = mid
            else:
                hi = mid
        (t0, p0), (t1, p1) = pts[lo], pts[hi]
        return p0 + (p1 - p0) * (t - t0) / (t1 - t0) if t1 > t0 else p0

    xs = [a, *[t for t, _ in pts if a < t < b], b]
    ys = [power_at(t) for t in xs]
    return sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1))


def coverage(times_s: Sequence[float], start_s: float, end_s: float, period_s: float) -> float:
    """Share of [start, end] covered by samples taken every `period_s`: a gap between
    consecutive samples (or a window edge and its nearest sample) longer than 2 periods
    leaves all but one period of it uncovered. 1.0 for a regular sampler; an empty or
    zero-length window is fully covered only if it has samples."""
    if end_s <= start_s:
        return 1.0 if times_s else 0.0
    inside = sorted(t for t in times_s if start_s <= t <= end_s)
    edges = [start_s, *inside, end_s]
    uncovered = sum(b - a - period_s for a, b in zip(edges, edges[1:]) if b - a > 2 * period_s)
    return max(0.0, min(1.0, 1.0 - uncovered / (end_s - start_s)))


def max_gap_s(times_s: Sequence[float], start_s: float, end_s: float) -> float:
    """Longest stretch of [start, end] without a sample (edges included)."""
    inside = sorted(t for t in times_s if start_s <= t <= end_s)
    edges = [start_s, *inside, end_s]
    return max((b - a for a, b in zip(edges, edges[1:])), default=0.0)
