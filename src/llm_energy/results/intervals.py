"""Student-t 95% intervals across cycles, in pure Python (no numpy), so that the measuring
process of any backend environment applies the validity gate by the same rule as the summary.

The summary's vectorised `statistics.ratio_of_sums` and `ratio_interval` here compute the same
interval (tested against each other); `relative_half_width` is what `measurement.target_ci_rel`
is compared with, in the protocol (stopping rule) and in the summary (`gate_met`)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

# Two-sided 95% Student-t critical values by degrees of freedom (beyond 30: normal).
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t95(dof: int) -> float:
    return _T95[dof - 1] if dof <= len(_T95) else 1.960


def _present(v: float | None) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def mean_ci(values: Iterable[float | None],
            ) -> tuple[float | None, float | None, float | None, float | None]:
    """(mean, std, ci_low, ci_high); the interval is None with fewer than two values."""
    clean = [float(v) for v in values if _present(v)]
    if not clean:
        return None, None, None, None
    mean = statistics.fmean(clean)
    if len(clean) < 2:
        return mean, None, None, None
    std = statistics.stdev(clean)
    half = t95(len(clean) - 1) * std / math.sqrt(len(clean))
    return mean, std, mean - half, mean + half


def ratio_interval(nums: Sequence[float | None], dens: Sequence[float | None],
                   positive: bool = True) -> tuple[float | None, float | None, float | None]:
    """(value, low, high) of a ratio of sums across cycles: value = Σnum ÷ Σden over the
    cycles where both are present; the 95% interval from the per-cycle ratios num/den (den > 0;
    None with fewer than two): for a `positive` quantity whose ratios are all > 0, Student t on
    the log scale around the value (value × exp(±t·s_log/√n)); otherwise value ± t·s/√n, the
    low bound clipped at 0 when `positive`. The summary's `statistics.ratio_of_sums`, per cell."""
    pairs = [(float(n), float(d)) for n, d in zip(nums, dens) if _present(n) and _present(d)]
    total_den = sum(d for _, d in pairs)
    if not pairs or total_den == 0:
        return None, None, None
    value = sum(n for n, _ in pairs) / total_den
    ratios = [n / d for n, d in pairs if d > 0]
    if len(ratios) < 2:
        return value, None, None
    t, root_n = t95(len(ratios) - 1), math.sqrt(len(ratios))
    if positive and value > 0 and all(r > 0 for r in ratios):
        factor = math.exp(t * statistics.stdev(math.log(r) for r in ratios) / root_n)
        return value, value / factor, value * factor
    half = t * statistics.stdev(ratios) / root_n
    low = value - half
    return value, max(low, 0.0) if positive else low, value + half


def relative_half_width(value: float | None, low: float | None,
                        high: float | None) -> float | None:
    """Half the interval's width ÷ |value|: 0.03 means the interval spans about ±3% of the
    value. None without an interval or with a zero value."""
    if value is None or low is None or high is None or value == 0 \
            or any(isinstance(x, float) and math.isnan(x) for x in (value, low, high)):
        return None
    return (high - low) / 2.0 / abs(value)


def interval_met(ci_rel: float | None, target_ci_rel: float | None) -> bool | None:
    """Whether the relative half-width is within the target (None: no target set). Without
    an interval (fewer than two cycles) a target is never met."""
    if target_ci_rel is None or (isinstance(target_ci_rel, float) and math.isnan(target_ci_rel)):
        return None
    return ci_rel is not None and ci_rel <= target_ci_rel
