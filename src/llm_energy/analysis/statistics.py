"""Statistics of the summary: ratio-of-sums values with sign-respecting 95% intervals across
cycles, and percentile-bootstrap intervals over requests (seeded). Method: docs/methodology.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

# The t table and the scalar statistics live in `intervals` (pure Python: the measuring
# process applies the validity gate with them).
from llm_energy.results.intervals import _T95, mean_ci, t95  # noqa: F401

# Percentile bootstrap over requests: resamples per cell, and the seed (mixed with the cell id,
# so cells do not share resampling patterns, yet every rerun gives the same interval).
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0

NO_INTERVAL = "fewer than 2 cycles: no confidence interval"


def weighted_percentiles(sorted_values: np.ndarray, weights: np.ndarray, q: float) -> np.ndarray:
    """Linear-interpolated percentile (numpy's default) of the multiset in which
    `sorted_values[j]` appears `weights[b, j]` times, for each row b: the percentile of a
    bootstrap resample without materialising it."""
    return _multiset_percentiles(sorted_values, np.cumsum(weights, axis=1), (q,))[q]


def _multiset_percentiles(sorted_values: np.ndarray, cum: np.ndarray, qs: Iterable[float],
                          ) -> dict[float, np.ndarray]:
    """`weighted_percentiles` for several q from the row-wise cumulative integer weights
    `cum` (modified in place)."""
    total = cum[:, -1].copy()
    # The k-th element (0-based) of the expanded multiset is the first j with cum[j] > k.
    # One searchsorted for all rows (a loop over rows made 10,000-cell studies take hours):
    # rows are non-decreasing, so shifting row b by b * (max total + 1) sorts the flattened
    # array, and row b's answer is its global index minus b * width. Same result. The
    # shift is applied once, in place and in integers, for all q (a float copy per q was
    # most of the bootstrap's time).
    rows, width = cum.shape
    shift = np.arange(rows, dtype=cum.dtype) * (total.max() + 1)
    cum += shift[:, None]
    flat = cum.ravel()
    start = np.arange(rows) * width
    out = {}
    for q in qs:
        rank = (total - 1) * q / 100.0
        low = np.floor(rank)
        high = np.minimum(low + 1, total - 1)
        i_low = np.searchsorted(flat, low.astype(cum.dtype) + shift, side="right") - start
        i_high = np.searchsorted(flat, high.astype(cum.dtype) + shift, side="right") - start
        v_low, v_high = sorted_values[i_low], sorted_values[i_high]
        out[q] = v_low + (v_high - v_low) * (rank - low)
    return out


def bootstrap_percentiles(per_request: list[list[float]], percentiles: Iterable[float],
                          resamples: int = BOOTSTRAP_RESAMPLES, seed: int | list[int] = BOOTSTRAP_SEED,
                          ) -> dict[float, tuple[float | None, float | None, float | None]]:
    """Per percentile q: (pooled value, 2.5% and 97.5% bootstrap quantiles). Requests are
    the resampling unit (a request's inter-token gaps stay together: they are correlated).
    Bounds are None with fewer than 2 requests that have a value."""
    groups = [np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
              for values in per_request]
    groups = [g for g in groups if g.size]
    flat = np.concatenate(groups) if groups else np.empty(0)
    owner = np.repeat(np.arange(len(groups)), [g.size for g in groups])
    return _bootstrap_flat(flat, owner, len(groups), tuple(percentiles), resamples, seed)


def _bootstrap_flat(flat: np.ndarray, owner: np.ndarray, n_groups: int, percentiles: tuple,
                    resamples: int, seed: int | list[int],
                    ) -> dict[float, tuple[float | None, float | None, float | None]]:
    """`bootstrap_percentiles` on values already flattened: `owner[i]` is the request
    (0..n_groups-1, each with at least one value) that `flat[i]` belongs to."""
    if flat.size == 0:
        return {q: (None, None, None) for q in percentiles}
    pooled = {q: float(np.percentile(flat, q)) for q in percentiles}
    if n_groups < 2:
        return {q: (pooled[q], None, None) for q in percentiles}
    order = np.argsort(flat, kind="stable")
    values, owner = flat[order], owner[order]
    rng = np.random.default_rng(seed)
    # All resamples' request indices in one draw, counted per row with one bincount (a
    # Python loop of `resamples` draws was most of the bootstrap's cost).
    picks = rng.integers(0, n_groups, (resamples, n_groups))
    picks += np.arange(resamples)[:, None] * n_groups
    counts = np.bincount(picks.ravel(), minlength=resamples * n_groups).reshape(resamples, n_groups)
    # Bounded memory: resamples × values weights per chunk; the cumulative weights are
    # computed once per chunk and shared by every percentile.
    chunk = max(1, 4_000_000 // values.size)
    replicates: dict[float, list[np.ndarray]] = {q: [] for q in percentiles}
    for first in range(0, resamples, chunk):
        cum = np.cumsum(counts[first:first + chunk][:, owner], axis=1)
        for q, reps in _multiset_percentiles(values, cum, percentiles).items():
            replicates[q].append(reps)
    out: dict[float, tuple[float | None, float | None, float | None]] = {}
    for q in percentiles:
        reps = np.concatenate(replicates[q])
        low, high = np.quantile(reps, [0.025, 0.975])
        out[q] = (pooled[q], float(low), float(high))
    return out



def _t95_array(dof: np.ndarray) -> np.ndarray:
    table = np.asarray([np.nan, *_T95])  # index 0: no degrees of freedom, no interval
    return np.where(dof > len(_T95), 1.960, table[np.clip(dof, 0, len(_T95))])




def ratio_of_sums(cell: pd.Series | np.ndarray, num: pd.Series, den: pd.Series, cells: pd.Index,
                  positive: bool) -> dict[str, np.ndarray]:
    """Per cell (rows grouped by `cell`, results in the order of `cells`): the headline value
    Σnum ÷ Σden over the rows where both are present (a mean is num = x, den = 1), the
    standard deviation of the per-row ratios num/den (rows with den > 0), and a 95% interval
    (null with fewer than 2 such rows):

    - `positive` quantities whose per-row ratios are all > 0: a Student-t interval on the log
      scale, centred on the headline value: value × exp(±t(0.975, n−1) · s_log / √n), s_log
      the standard deviation of log(num/den). It stays positive however the cycles vary.
    - otherwise a Student-t interval value ± t · s / √n, whose low bound is clipped at 0 for
      a positive quantity (a per-row ratio of exactly 0 has no logarithm).

    Returns {"value", "std", "low", "high"}: float arrays, NaN where undefined."""
    # NumPy passes over integer group codes (`cell` may already be codes into `cells`).
    code = np.asarray(cell) if np.issubdtype(np.asarray(cell).dtype, np.integer) \
        else pd.Index(cells).get_indexer(cell)
    num = pd.to_numeric(num, errors="coerce").to_numpy(dtype=float)
    den = pd.to_numeric(den, errors="coerce").to_numpy(dtype=float)
    size = len(cells)
    both = ~np.isnan(num) & ~np.isnan(den) & (code >= 0)
    sum_num = np.bincount(code[both], num[both], size)
    sum_den = np.bincount(code[both], den[both], size)
    seen = np.bincount(code[both], minlength=size) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(seen & (sum_den != 0), sum_num / sum_den, np.nan)
        rows = both & (den > 0)
        r = num[rows] / den[rows]
        n, std = _grouped_std(code[rows], r, size)
        positive_rows = r > 0
        n_log, log_std = _grouped_std(code[rows][positive_rows], np.log(r[positive_rows]), size)
    all_positive = n_log == n
    t = _t95_array(n - 1)
    root_n = np.sqrt(np.maximum(n, 1))
    half = t * std / root_n
    low, high = value - half, value + half
    if positive:
        low = np.maximum(low, 0.0)
        use_log = all_positive & (value > 0) & np.isfinite(log_std)
        factor = np.exp(t * np.where(use_log, log_std, 0.0) / root_n)
        low = np.where(use_log, value / factor, low)
        high = np.where(use_log, value * factor, high)
    low = np.where(n >= 2, low, np.nan)
    high = np.where(n >= 2, high, np.nan)
    return {"value": value, "std": std, "low": low, "high": high}


def _grouped_std(code: np.ndarray, x: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(count, sample standard deviation) of `x` per group code (two-pass, so large values
    with a small spread keep their precision); NaN with fewer than 2 values."""
    n = np.bincount(code, minlength=size)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.bincount(code, x, size) / n
        squares = np.bincount(code, (x - mean[code]) ** 2, size)
        std = np.where(n >= 2, np.sqrt(squares / (n - 1)), np.nan)
    return n, std
