import pytest

from llm_energy.backends.base import RequestRecord
from llm_energy.measure import metrics


def rec(i, arrival, times, n_in=10, scheduled=None):
    return RequestRecord(i, n_in, len(times), arrival, scheduled, list(times))


def test_percentile_matches_linear_interpolation():
    values = [1.0, 2.0, 3.0, 4.0]
    assert metrics.percentile(values, 50) == 2.5
    assert metrics.percentile(values, 90) == pytest.approx(3.7)
    assert metrics.percentile([], 50) is None


def test_latencies():
    r = rec(0, 1.0, [1.5, 1.6, 1.8])
    assert metrics.ttft_ms(r) == pytest.approx(500)
    assert metrics.itl_ms(r) == pytest.approx([100, 200])
    assert metrics.e2e_ms(r) == pytest.approx(800)
    assert metrics.tpot_ms(r) == pytest.approx(150)


def test_batch_full_window_follows_the_batch_limit():
    # Limit 2: requests 0 and 1 run together from t=1; request 2 joins at t=3 when 0 leaves;
    # from t=4 only request 2 remains.
    records = [rec(0, 0, [2, 3], scheduled=1), rec(1, 0, [2, 4], scheduled=1),
               rec(2, 0, [5, 6], scheduled=3)]
    window = metrics.batch_full_window(records, 2)
    assert (window.start_s, window.end_s) == (1, 4)
    assert metrics.batch_full_window(records, 4) is None


def test_batch_full_window_does_not_count_queued_requests():
    # vLLM offline: all three handed over at t=0, no scheduled_s. Counted from arrival, three
    # would be "running" from t=0; they run from their first token: 2 from t=1, 1 from t=3,
    # 2 again from t=3.5 to t=4.
    records = [rec(0, 0, [1, 3]), rec(1, 0, [1, 4]), rec(2, 0, [3.5, 6])]
    window = metrics.batch_full_window(records, 2)
    assert (window.start_s, window.end_s) == (1, 4)
    assert metrics.running_interval(records[2]) == (3.5, 6)
    assert metrics.running_interval(rec(3, 0, [2, 3], scheduled=1.5)) == (1.5, 3)
    assert metrics.running_interval(rec(4, 0, [])) is None


def test_energy_split_sums_to_window_and_follows_tokens():
    records = [rec(0, 0.0, [0.2, 0.4, 0.6], n_in=8), rec(1, 0.0, [0.2, 0.4, 0.6, 0.8], n_in=2)]
    shares = metrics.split_energy_by_tokens(records, 0.0, 1.0, 10.0)
    assert sum(shares) == pytest.approx(10.0, rel=1e-3)
    # First interval (prefill) energy 2 J split 9:3 by prompt tokens + first token.
    assert shares[0] == pytest.approx(2.0 * 9 / 12 + 1.0 + 1.0)
    assert shares[1] == pytest.approx(2.0 * 3 / 12 + 1.0 + 1.0 + 4.0)


def test_energy_split_uses_the_power_profile():
    records = [rec(0, 0.0, [0.5]), rec(1, 0.0, [1.0])]
    profile = [(0.0, 100.0), (0.5, 100.0), (0.5001, 0.0), (1.0, 0.0)]
    shares = metrics.split_energy_by_tokens(records, 0.0, 1.0, 50.0, profile)
    assert shares[0] == pytest.approx(50.0, rel=1e-3) and shares[1] == pytest.approx(0.0, abs=0.01)


def test_integrate_power_interpolates_at_edges():
    profile = [(0.0, 0.0), (2.0, 20.0)]
    assert metrics.integrate_power(profile, 0.0, 2.0) == pytest.approx(20.0)
    assert metrics.integrate_power(profile, 1.0, 2.0) == pytest.approx(15.0)
    assert metrics.integrate_power(profile, 2.0, 3.0) == pytest.approx(20.0)  # held after last
