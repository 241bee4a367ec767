"""Statistics across cycles (ratios of sums, sign-respecting intervals) and over requests
(seeded percentile bootstrap); every per-cycle metric aggregated as the registry declares."""


import numpy as np
import pandas as pd
import pytest
from scipy import stats

from llm_energy.analysis import statistics
from llm_energy.analysis.statistics import (
    NO_INTERVAL,
    bootstrap_percentiles,
    mean_ci,
    ratio_of_sums,
    weighted_percentiles,
)
from llm_energy.analysis.summary import HEADLINE_METRICS, avg_batch_size, summarise
from llm_energy.results import schema
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


@pytest.mark.parametrize("float32", [True, False])
def test_bootstrap_equals_the_explicit_resamples(monkeypatch, float32):
    """The bounds are the 2.5%/97.5% quantiles of the percentiles of explicit resamples of
    whole requests drawn with the seeded generator (the cumulative weights as a float32
    product or as integer sums: the same numbers)."""
    if not float32:
        monkeypatch.setattr(statistics, "FLOAT32_EXACT", 0)
    rng = np.random.default_rng(3)
    per_request = [list(rng.exponential(5.0, size=int(rng.integers(1, 9))).round(1))
                   for _ in range(12)]
    got = bootstrap_percentiles(per_request, (50, 90), resamples=200, seed=[0, 11])
    picks = np.random.default_rng([0, 11]).integers(0, 12, (200, 12))
    for q in (50, 90):
        reps = [np.percentile(np.concatenate([per_request[r] for r in row]), q) for row in picks]
        low, high = np.quantile(reps, [0.025, 0.975])
        assert got[q][1] == pytest.approx(low, rel=1e-12) and got[q][2] == pytest.approx(high, rel=1e-12)
        assert got[q][0] == np.percentile(np.concatenate(per_request), q)


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
                   energy_per_output_token_j=e, total_energy_j=e * 80, output_tokens=80,
                   requests=4, duration_s=1.0,
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


def _cycles(cell_id, cycles, **constant):
    """Runs rows from per-cycle column values: cycles = [{column: value}, ...]."""
    rows = []
    for k, values in enumerate(cycles):
        row = {name: None for name in RUN_COLUMNS}
        row.update(schema_version=1, cell_id=cell_id, cycle=k, model="m", backend="vllm",
                   device="cpu", status="ok", warnings=[], energy_source="estimate",
                   max_num_seqs=4, **constant, **values)
        rows.append(row)
    return rows


def test_headline_values_are_ratios_of_sums():
    # Very different per-cycle rates: 1000 tokens in 1 s at 200 W, then twice 100 tokens in
    # 10 s at 50 W. The mean of per-cycle rates (340 tok/s) is 6x total tokens / total time.
    cycles = [{"output_tokens": t, "duration_s": d, "total_energy_j": p * d, "requests": 4}
              for t, d, p in ((1000, 1.0, 200.0), (100, 10.0, 50.0), (100, 10.0, 50.0))]
    for c in cycles:  # per-cycle columns as the protocol writes them
        c.update(output_tokens_per_s=c["output_tokens"] / c["duration_s"],
                 avg_power_w=c["total_energy_j"] / c["duration_s"],
                 energy_per_output_token_j=c["total_energy_j"] / c["output_tokens"],
                 energy_per_request_j=c["total_energy_j"] / c["requests"])
    assert np.mean([c["output_tokens_per_s"] for c in cycles]) > 2 * 1200 / 21
    row = summarise(pd.DataFrame(_cycles("aaaaaaaaaaa1", cycles)), None).iloc[0]
    assert row["energy_per_output_token_j"] == pytest.approx(1200 / 1200)
    assert row["output_tokens_per_s"] == pytest.approx(1200 / 21)
    assert row["avg_power_w"] == pytest.approx(1200 / 21)
    assert row["energy_per_request_j"] == pytest.approx(1200 / 12)
    j_per_token = row["avg_power_w"] / row["output_tokens_per_s"]
    assert abs(j_per_token - row["energy_per_output_token_j"]) / j_per_token < 1e-3
    # Each value lies inside its own interval.
    for metric in ("energy_per_output_token_j", "output_tokens_per_s", "avg_power_w"):
        assert row[f"{metric}_ci95_low"] <= row[metric] <= row[f"{metric}_ci95_high"]


def test_no_negative_lower_bound_for_positive_quantities():
    # Three non-stationary cycles (durations 17.5, 8.3, 1.75 s): a symmetric t-interval
    # gives a duration of -10.4 s at its low end.
    cycles = [{"duration_s": d, "output_tokens": 100, "total_energy_j": 10.0 * d, "requests": 4,
               "ttft_ms_p50": d * 300.0, "idle_power_w": 1.0 + d}
              for d in (17.5, 8.3, 1.75)]
    row = summarise(pd.DataFrame(_cycles("aaaaaaaaaaa1", cycles)), None).iloc[0]
    assert row["duration_s"] == pytest.approx(np.mean([17.5, 8.3, 1.75]))
    positive = [c.name for c in schema.aggregated() if c.positive and c.interval]
    checked = [m for m in positive if m in row and not pd.isna(row[m])]  # optional: absent
    assert {"duration_s", "energy_per_output_token_j", "ttft_ms_p50", "output_tokens_per_s"} <= set(checked)
    for metric in checked:
        assert 0 < row[f"{metric}_ci95_low"] <= row[metric] <= row[f"{metric}_ci95_high"], metric
    # A quantity that may be negative (net energy) keeps the symmetric interval.
    values = [-1.0, 0.5, 2.0]
    stats = ratio_of_sums(pd.Series(["c"] * 3), pd.Series(values), pd.Series([1.0] * 3),
                          pd.Index(["c"]), positive=False)
    assert stats["low"][0] == pytest.approx(mean_ci(values)[2])


def test_positive_interval_with_a_zero_cycle_is_clipped_at_zero():
    stats = ratio_of_sums(pd.Series(["c"] * 3), pd.Series([1.5, 0.0, 0.14]),
                          pd.Series([1.0] * 3), pd.Index(["c"]), positive=True)
    assert stats["value"][0] == pytest.approx(np.mean([1.5, 0.0, 0.14]))
    assert stats["low"][0] == 0.0 and stats["high"][0] == pytest.approx(mean_ci([1.5, 0, 0.14])[3])


def test_log_interval_matches_scipy_on_the_log_scale():
    values = [2.0, 3.0, 5.0, 4.0]
    stats = ratio_of_sums(pd.Series(["c"] * 4), pd.Series(values), pd.Series([1.0] * 4),
                          pd.Index(["c"]), positive=True)
    logs = np.log(values)
    half = stats_t_half(logs)
    assert stats["low"][0] == pytest.approx(np.mean(values) * np.exp(-half), rel=1e-3)
    assert stats["high"][0] == pytest.approx(np.mean(values) * np.exp(half), rel=1e-3)


def stats_t_half(values):
    return stats.t.ppf(0.975, len(values) - 1) * stats.sem(values)


def test_server_metrics_are_per_cycle_metrics_not_settings():
    # Server backends add per-cycle columns from /metrics; an undeclared column used to be
    # taken for a setting, so the summary kept cycle 0's value (1.5).
    cycles = [{"server_avg_batch_size": v, "server_max_batch_size": m, "server_metric_samples": 5,
               "server_kv_cache_usage_pct_mean": 10.0 * v, "server_kv_cache_usage_pct_max": 20.0,
               "output_tokens": 100, "duration_s": 1.0}
              for v, m in ((1.5, 3.0), (0.0, 1.0), (0.14, 2.0))]
    row = summarise(pd.DataFrame(_cycles("aaaaaaaaaaa1", cycles)), None).iloc[0]
    assert row["server_avg_batch_size"] == pytest.approx(np.mean([1.5, 0.0, 0.14]))
    assert row["server_max_batch_size"] == 3.0 and row["server_metric_samples"] == 15
    assert row["server_kv_cache_usage_pct_mean"] == pytest.approx(np.mean([15.0, 0.0, 1.4]))
    assert "server_avg_batch_size_ci95_low" in row
    assert not any(schema.is_setting(c) for c in row.index if c.startswith("server_"))
    assert row["max_num_seqs"] == 4  # a real setting stays


def test_undeclared_column_is_never_a_setting():
    runs = pd.DataFrame(_cycles("aaaaaaaaaaa1", [{"some_new_metric": 1.0}, {"some_new_metric": 2.0}]))
    summary = summarise(runs, None)
    assert "some_new_metric" not in summary.columns and "max_num_seqs" in summary.columns
    assert schema.present_settings(runs) == ["max_num_seqs"]


def test_every_per_cycle_metric_is_aggregated():
    summary = summarise(pd.DataFrame(_runs("aaaaaaaaaaa1", [0.1, 0.2])), None)
    for col in schema.aggregated():
        assert (col.name in summary.columns) == (col.optional is None), col.name


def test_summary_csv_writes_list_columns_as_text(tmp_path):
    from llm_energy.analysis.summary import Aggregation, write_summary

    runs = pd.DataFrame(_runs("aaaaaaaaaaa1", [0.1, 0.2]))
    runs["warnings"] = [["a"], ["b"]]
    runs["mlenergy_flags"] = [["request_success"], []]
    runs["mlenergy_valid"] = [False, True]
    summary = summarise(runs, None)
    assert summary.loc[0, "mlenergy_valid"] is False
    write_summary(Aggregation(summary, runs), tmp_path / "s.parquet", tmp_path / "s.csv")
    row = pd.read_csv(tmp_path / "s.csv").iloc[0]
    assert row["warnings"] == "a | b" and row["mlenergy_flags"] == "request_success"
    assert list(pd.read_parquet(tmp_path / "s.parquet").loc[0, "mlenergy_flags"]) == ["request_success"]
