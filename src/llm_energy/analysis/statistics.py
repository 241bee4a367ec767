"""Statistics of the summary: ratio-of-sums values with sign-respecting 95% intervals across
cycles, and percentile-bootstrap intervals over requests (seeded). Method: docs/methodology.md.
"""

from __future__ import annotations

import contextlib
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

# Integers below this are exact in float32 (the bootstrap's cumulative weights).
FLOAT32_EXACT = 2**24

NO_INTERVAL = "fewer than 2 cycles: no confidence interval"


def weighted_percentiles(sorted_values: np.ndarray, weights: np.ndarray, q: float) -> np.ndarray:
    """Linear-interpolated percentile (numpy's default) of the multiset in which
    `sorted_values[j]` appears `weights[b, j]` times, for each row b: the percentile of a
    bootstrap resample without materialising it."""
    cum = np.cumsum(np.ascontiguousarray(np.asarray(weights).T), axis=0)
    return _multiset_percentiles(sorted_values, cum, (q,))[q]


def _multiset_percentiles(sorted_values: np.ndarray, cum: np.ndarray, qs: Iterable[float],
                          ) -> dict[float, np.ndarray]:
    """`weighted_percentiles` for several q from the cumulative integer weights `cum`, one
    column per resample (`cum[j, b]`: how many of resample b's values are <= sorted_values[j])."""
    total = cum[-1].astype(np.int64)  # exact integers even where `cum` holds them as floats
    width, cols = cum.shape
    qs = tuple(qs)
    rank = (total - 1) * np.asarray(qs, dtype=float)[:, None] / 100.0  # one row per q
    low = np.floor(rank)
    high = np.minimum(low + 1, total - 1)
    # The k-th element (0-based) of the expanded multiset is the first j with cum[j] > k:
    # a binary search per resample, for every q's low and high rank at once (columns are
    # non-decreasing; ~11 gathers of one value per search instead of a search per row).
    k = np.concatenate([low, high]).astype(cum.dtype)
    col = np.broadcast_to(np.arange(cols), k.shape)
    lo, hi = np.zeros(k.shape, dtype=np.intp), np.full(k.shape, width - 1, dtype=np.intp)
    for _ in range(max(1, int(width - 1).bit_length())):
        mid = (lo + hi) // 2
        above = cum[mid, col] > k
        hi = np.where(above, mid, hi)
        lo = np.where(above, lo, mid + 1)
    v_low, v_high = sorted_values[hi[:len(qs)]], sorted_values[hi[len(qs):]]
    out = v_low + (v_high - v_low) * (rank - low)
    return {q: out[i] for i, q in enumerate(qs)}


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
    with one_blas_thread():
        return _bootstrap_flat(flat, owner, len(groups), tuple(percentiles), resamples, seed)


def one_blas_thread():
    """The BLAS on one thread, around many bootstraps (their products are small: threads
    cost more than they give there, several times more on a loaded machine; entering this
    costs ~1 ms). No limit where threadpoolctl is missing."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - installed with scikit-learn (zeus)
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


_COUNTS_CACHE: dict[tuple, np.ndarray] = {}


def _resample_counts(n_groups: int, resamples: int, seed: int | list[int]) -> np.ndarray:
    """How often each request is drawn (`[request, resample]`): all resamples' indices in
    one draw of the seeded generator, counted with one bincount (a Python loop of
    `resamples` draws was most of the bootstrap's cost). A cell's latencies with as many
    requests share the same draw (same seed): the last few draws are kept, read-only."""
    key = (n_groups, resamples, tuple(np.atleast_1d(seed).tolist()))
    if key not in _COUNTS_CACHE:
        picks = np.random.default_rng(seed).integers(0, n_groups, (resamples, n_groups))
        picks += np.arange(resamples)[:, None] * n_groups
        counts = np.bincount(picks.ravel(), minlength=resamples * n_groups)
        if len(_COUNTS_CACHE) > 8:
            _COUNTS_CACHE.clear()
        counts = np.ascontiguousarray(counts.reshape(resamples, n_groups).T)
        counts.flags.writeable = False
        _COUNTS_CACHE[key] = counts
    return _COUNTS_CACHE[key]


def _bootstrap_flat(flat: np.ndarray, owner: np.ndarray, n_groups: int, percentiles: tuple,
                    resamples: int, seed: int | list[int],
                    ) -> dict[float, tuple[float | None, float | None, float | None]]:
    """`bootstrap_percentiles` on values already flattened: `owner[i]` is the request
    (0..n_groups-1, each with at least one value) that `flat[i]` belongs to."""
    if flat.size == 0:
        return {q: (None, None, None) for q in percentiles}
    pooled = dict(zip(percentiles, np.percentile(flat, percentiles).tolist()))
    if n_groups < 2:
        return {q: (pooled[q], None, None) for q in percentiles}
    order = np.argsort(flat, kind="stable")
    values, owner = flat[order], owner[order]
    counts = _resample_counts(n_groups, resamples, seed)
    # The cumulative weights, one row per sorted value and one column per resample:
    # cum[j, b] = sum over requests r of below[r, j] * counts[r, b], where below[r, j] is
    # how many of request r's values are among the first j+1: one matrix product (float32
    # BLAS, exact while every sum stays below 2**24; else integer cumulative sums, ~5×
    # slower). Bounded memory: values × resamples per chunk, shared by every percentile.
    sizes = np.bincount(owner, minlength=n_groups)
    exact = n_groups * int(sizes.max()) < FLOAT32_EXACT
    if exact:
        below = np.zeros((n_groups, values.size), dtype=np.float32)
        below[owner, np.arange(values.size)] = 1
        np.cumsum(below, axis=1, out=below)
        below_t = np.ascontiguousarray(below.T)
    chunk = max(1, 4_000_000 // values.size)
    replicates: dict[float, list[np.ndarray]] = {q: [] for q in percentiles}
    for first in range(0, resamples, chunk):
        if exact:
            cum = below_t @ counts[:, first:first + chunk].astype(np.float32)
        else:
            cum = np.cumsum(counts[:, first:first + chunk][owner], axis=0)
        for q, reps in _multiset_percentiles(values, cum, percentiles).items():
            replicates[q].append(reps)
    out: dict[float, tuple[float | None, float | None, float | None]] = {}
    bounds = np.quantile(np.stack([np.concatenate(replicates[q]) for q in percentiles]),
                         [0.025, 0.975], axis=1).tolist()
    for i, q in enumerate(percentiles):
        out[q] = (pooled[q], bounds[0][i], bounds[1][i])
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
