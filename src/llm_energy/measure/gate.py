"""The validity gate's rules as pure functions: how many repetitions of the workload fill a
cycle's energy window, whether a cell needs another cycle, and which cells are flagged as
non-stationary or contended. The protocol (`protocol.py`) applies them; the summary reports
the same interval rule (`results.intervals`)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from llm_energy.results.intervals import (
    interval_met,
    ratio_interval,
    relative_half_width,
)

#: Planned repetitions aim this much above `min_window_s`, so that a slightly slower
#: repetition does not leave the window short (a short window is topped up, see protocol).
REPETITION_MARGIN = 1.25


def repetitions_for(window_s: float, per_repetition_s: float | None,
                    margin: float = REPETITION_MARGIN) -> int:
    """Repetitions of a workload taking `per_repetition_s` that fill `window_s` × `margin`
    (at least 1; 1 when the time per repetition is unknown)."""
    if window_s <= 0 or not per_repetition_s or per_repetition_s <= 0:
        return 1
    return max(1, math.ceil(window_s * margin / per_repetition_s))


def j_per_token_ci_rel(energy_j: Sequence[float | None],
                       output_tokens: Sequence[float | None]) -> float | None:
    """Relative half-width of the cell's J/token interval as the summary reports it: J/token
    = Σ energy ÷ Σ output tokens over the cycles, its 95% interval Student t on the log scale
    of the per-cycle J/token (`intervals.ratio_interval`). None with fewer than 2 cycles that
    have energy."""
    return relative_half_width(*ratio_interval(energy_j, output_tokens, positive=True))


def more_cycles_needed(energy_j: Sequence[float | None], output_tokens: Sequence[float | None],
                       cycles: int, max_cycles: int, target_ci_rel: float | None) -> bool:
    """The stopping rule. After `len(energy_j)` cycles (each cycle's energy, None where the
    sensor failed, and output tokens): run another while fewer than `cycles` ran, or while the
    95% interval of J/token (`j_per_token_ci_rel`) is wider than ± `target_ci_rel`, never
    beyond `max_cycles`. Without a target, exactly `cycles` run."""
    done = len(energy_j)
    if done < cycles:
        return True
    if done >= max_cycles or target_ci_rel is None:
        return False
    return not interval_met(j_per_token_ci_rel(energy_j, output_tokens), target_ci_rel)


def _cv(values: Sequence[float]) -> float | None:
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    return statistics.stdev(values) / abs(mean) if mean else None


def _numbers(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.4g}" for v in values)


def stationarity_warnings(per_repetition_s: Sequence[float | None],
                          j_per_token: Sequence[float | None], max_cv: float) -> list[str]:
    """Flags for a cell whose cycles were not alike: the run time of one repetition of the
    workload (cycle duration ÷ repetitions) or the J/token varying across cycles with a
    coefficient of variation (sample std ÷ mean) above `max_cv`. The values are in the text."""
    warnings = []
    for what, unit, values in (("time per workload repetition", " s", per_repetition_s),
                               ("energy per output token", " J", j_per_token)):
        clean = [float(v) for v in values if v is not None]
        cv = _cv(clean)
        if cv is not None and cv > max_cv:
            warnings.append(
                f"not stationary: {what} varies across cycles ({_numbers(clean)}{unit}; "
                f"CV {cv:.0%} > {max_cv:.0%}): the machine's speed changed between cycles "
                "(contention, throttling, frequency scaling?)")
    return warnings


def contention_warning(cycle: int, other_cpu_s: float | None, duration_s: float,
                       max_cores: float) -> str | None:
    """A flag when processes outside the cell's own tree used more than `max_cores` cores on
    average during the cycle's window (their CPU time ÷ the window)."""
    if other_cpu_s is None or duration_s <= 0:
        return None
    cores = other_cpu_s / duration_s
    if cores <= max_cores:
        return None
    return (f"contention: other processes used {other_cpu_s:.2f} CPU-s in cycle {cycle} "
            f"({cores:.2f} cores on average over {duration_s:.2f} s, > {max_cores:g}): the "
            "cell shared the CPU, so its latency and throughput are not those of a quiet "
            "machine")
