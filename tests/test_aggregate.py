"""Statistics across cycles (Student t) and over requests (seeded percentile bootstrap)."""


import numpy as np
import pandas as pd
import pytest
from scipy import stats

from llm_energy.analysis.summary import (
    HEADLINE_METRICS,
    NO_INTERVAL,
    avg_batch_size,
    bootstrap_percentiles,
    mean_ci,
    summarise,
    weighted_percentiles,
)
from llm_energy.results.io import RUN_COLUMNS


@pytest.mark.parametrize("values", [[1.0, 2.0], [3.0, 3.5, 2.9], list(np.linspace(1, 9, 40))])
def test_mean_ci_matches_scipy_t_interval(values):
    mean, std, low, high = mean_ci(values)
    want = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert mean == pytest.approx(np.mean(values))
    assert std == pytest.approx(np.std(values, ddof=1))
    # Beyond 30 degrees of freedom the table falls back to the normal quantile (1.96).
    tol = 1e-3 if len(values) <= 31 else 0.03
    assert low == pytest.approx(want[0], rel=tol) and high == pytest.approx(want[1], rel=tol)


def test_mean_ci_one_value_has_no_interval():
    assert mean_ci([2.0, None, float("nan")]) == (2.0, None, None, None)
    assert mean_ci([]) == (None, None, None, None)


def test_weighted_percentile_equals_percentile_of_the_resample():
    rng = np.random.default_rng(1)
    values = np.sort(rng.normal(size=30))
    weights = rng.integers(0, 4, size=(50, 30))
    weights[:, 0] += 1  # never an empty resample
    for q in (0, 10, 50, 90, 99, 100):
        got = weighted_percentiles(values, weights, q)
        want = [np.percentile(np.repeat(values, w), q) for w in weights]
        np.testing.assert_allclose(got, want)


def test_bootstrap_is_seeded_and_brackets_the_pooled_value():
    rng = np.random.default_rng(2)
    per_request = [list(rng.exponential(5.0, size=20)) for _ in range(40)]
    a = bootstrap_percentiles(per_request, (50, 99), resamples=300, seed=7)
    b = bootstrap_percentiles(per_request, (50, 99), resamples=300, seed=7)
    c = bootstrap_percentiles(per_request, (50, 99), resamples=300, seed=8)
    assert a == b and a != c
    flat = np.concatenate(per_request)
    for q, (pooled, low, high) in a.items():
        assert pooled == pytest.approx(np.percentile(flat, q))
        assert low < pooled < high
    # The median of 800 values is tighter than the p99.
    assert a[50][2] - a[50][1] < a[99][2] - a[99][1]


def test_bootstrap_needs_two_requests():
    assert bootstrap_percentiles([[1.0, 2.0, 3.0]], (50,)) == {50: (2.0, None, None)}
    assert bootstrap_percentiles([], (50,)) == {50: (None, None, None)}
    assert bootstrap_percentiles([[None], [float("nan")]], (50,)) == {50: (None, None, None)}


def test_avg_batch_size():
    # Two requests decoding together, then two more: a batch of 2.
    assert avg_batch_size([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(2.0)
    # One after the other: 1.
    assert avg_batch_size([0, 1, 2], [1, 2, 3]) == pytest.approx(1.0)
    # Overlapping half the time: busy 4 s over a 3 s union.
    assert avg_batch_size([0, 1], [2, 3]) == pytest.approx(4 / 3)
    assert avg_batch_size([], []) is None


def _runs(cell_id, energies, steady=True):
    rows = []
    for k, e in enumerate(energies):
        row = {name: None for name in RUN_COLUMNS}
        row.update(schema_version=1, cell_id=cell_id, cycle=k, model="m", backend="transformers",
                   device="cpu", status="ok", warnings=[], energy_source="estimate",
                   energy_per_output_token_j=e, output_tokens=80, requests=4,
                   steady_state_energy_j=e * 60 if steady else None,
                   steady_state_output_tokens=60 if steady else None, batch_size=2)
        rows.append(row)
    return rows


def _requests(cell_id, cycles):
    rows = []
    for k in range(cycles):
        for r in range(4):
            start = (r // 2) * 1.0  # two batches of two
            rows.append({"cell_id": cell_id, "cycle": k, "success": True,
                         "first_token_s": start + 0.1, "finish_s": start + 0.9,
                         "ttft_ms": 100.0 + 10 * r + k, "tpot_ms": 5.0 + r,
                         "e2e_ms": 900.0 + r, "itl_ms": [5.0 + r, 6.0 + r, 7.0 + k]})
    return rows


def test_summarise_cycles_bootstrap_and_one_cycle_note():
    runs = pd.DataFrame(_runs("aaaaaaaaaaa1", [0.1, 0.12, 0.11]) + _runs("aaaaaaaaaaa2", [0.2]))
    requests = pd.DataFrame(_requests("aaaaaaaaaaa1", 3) + _requests("aaaaaaaaaaa2", 1))
    summary = summarise(runs, requests, resamples=200).set_index("cell_id")
    three, one = summary.loc["aaaaaaaaaaa1"], summary.loc["aaaaaaaaaaa2"]
    for metric in HEADLINE_METRICS:
        assert {f"{metric}_ci95_low", f"{metric}_ci95_high", f"{metric}_std"} <= set(summary.columns)
    assert three["cycles"] == 3 and pd.isna(three["ci_note"])
    assert three["energy_per_output_token_j_ci95_low"] < 0.11 < three["energy_per_output_token_j_ci95_high"]
    # Steady-state energy per token derived per cycle: (e × 60 J) / 60 tokens.
    assert three["steady_state_energy_per_output_token_j"] == pytest.approx(0.11)
    assert three["avg_batch_size"] == pytest.approx(2.0)
    # Pooled TTFT over the 12 requests, with a bootstrap interval around it.
    ttft = [100.0 + 10 * r + k for k in range(3) for r in range(4)]
    assert three["ttft_ms_p50_pooled"] == pytest.approx(np.percentile(ttft, 50))
    assert three["ttft_ms_p50_boot95_low"] <= three["ttft_ms_p50_pooled"] <= three["ttft_ms_p50_boot95_high"]
    assert three["itl_ms_p99_boot95_high"] <= 9.0
    # One cycle: a mean, no interval, and the summary says why.
    assert one["cycles"] == 1 and one["ci_note"] == NO_INTERVAL
    assert one["energy_per_output_token_j"] == pytest.approx(0.2)
    assert pd.isna(one["energy_per_output_token_j_ci95_low"])
    # Same inputs, same intervals (seeded per cell).
    again = summarise(runs, requests, resamples=200).set_index("cell_id")
    assert again.loc["aaaaaaaaaaa1", "itl_ms_p90_boot95_low"] == three["itl_ms_p90_boot95_low"]


def test_summarise_without_requests_still_summarises():
    summary = summarise(pd.DataFrame(_runs("aaaaaaaaaaa1", [0.1, 0.2], steady=False)), None)
    row = summary.iloc[0]
    assert row["energy_per_output_token_j"] == pytest.approx(0.15)
    assert pd.isna(row["ttft_ms_p50_pooled"]) and pd.isna(row["avg_batch_size"])
    assert pd.isna(row["steady_state_energy_per_output_token_j"])
