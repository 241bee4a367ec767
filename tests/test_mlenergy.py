"""ML.ENERGY's rules (measure/mlenergy.py) on hand-built request timelines; every expected
window, average and flag is worked out by hand in the comments."""

import pytest

from llm_energy.backends.base import RequestRecord
from llm_energy.measure import mlenergy


def req(i, first, finish, scheduled=None, arrival=0.0, success=True):
    """A request whose first token comes at `first` and last at `finish` (None: no token)."""
    times = [] if first is None else ([first] if finish == first else [first, finish])
    return RequestRecord(i, 10, len(times), arrival, scheduled, times, success)


def window(records, b, dispatch_end_s=None):
    w = mlenergy.tracker_window(records, b, dispatch_end_s)
    return None if w is None else (w.start_s, w.end_s)


# N = 6, B = 2: the second first token (1.2) opens; k = 6 - 2 - 1 = 3 finishes close, the
# finishes sorted are 3, 4, 6, 7, 8, 9, so the third, 6.0, closes.
SIX = [req(0, 1.0, 3.0), req(1, 1.2, 4.0), req(2, 3.5, 6.0), req(3, 4.5, 7.0),
       req(4, 6.5, 8.0), req(5, 7.5, 9.0)]


def test_window_opens_at_the_bth_first_token_and_closes_at_finish_n_minus_b_minus_1():
    assert window(SIX, 2) == (1.2, 6.0)
    # B = 3: opens at the third first token 3.5; k = 6 - 3 - 1 = 2: the second finish, 4.0.
    assert window(SIX, 3) == (3.5, 4.0)
    # B = 1: opens at 1.0; k = 4: the fourth finish, 7.0.
    assert window(SIX, 1) == (1.0, 7.0)


def test_fewer_requests_than_max_num_seqs_gives_an_empty_window():
    # N = 3 < B = 4: never 4 first tokens; k = max(3 - 4 - 1, 1) = 1: the first finish (2.0)
    # sets both events, so the window opens and closes at 2.0.
    records = [req(0, 1.0, 2.0), req(1, 1.0, 3.0), req(2, 1.0, 4.0)]
    assert window(records, 4) == (2.0, 2.0)
    assert mlenergy.tracker_window(records, 4).duration_s == 0.0


def test_closing_before_opening_gives_an_empty_window():
    # N = 5, B = 3, k = max(5 - 3 - 1, 1) = 1: request 0 finishes at 4.0, before the third
    # first token at 5.0; the tracker opens the window when it closes it.
    records = [req(0, 1.0, 4.0), req(1, 2.0, 6.0), req(2, 5.0, 7.0), req(3, 6.0, 8.0),
               req(4, 7.0, 9.0)]
    assert window(records, 3) == (4.0, 4.0)


def test_ties_count_every_request_at_that_moment():
    # Static batches of 4 (N = 8): the first four first tokens all come at 1.0, so the 4th is
    # at 1.0; k = 8 - 4 - 1 = 3: the first batch's four finishes all come at 2.0.
    records = [req(i, 1.0, 2.0) for i in range(4)] + [req(i, 3.0, 4.0) for i in range(4, 8)]
    assert window(records, 4) == (1.0, 2.0)
    # B = 2: k = 5, the fifth finish is the second batch's (4.0).
    assert window(records, 2) == (1.0, 4.0)


def test_window_waits_for_the_last_dispatch():
    # Their benchmark awaits the opening only after dispatching every request.
    assert window(SIX, 2, dispatch_end_s=2.0) == (2.0, 6.0)
    assert window(SIX, 2, dispatch_end_s=0.5) == (1.2, 6.0)
    assert window(SIX, 2, dispatch_end_s=7.0) == (7.0, 7.0)


def test_failed_requests_count_and_unknown_finishes_come_last():
    # N = 4, B = 1, k = 2. Request 2 failed before any token: finishes known 2, 3, 4, the
    # second is 3.0. A failed request with tokens counts like any other.
    records = [req(0, 1.0, 2.0), req(1, 1.5, 3.0, success=False), req(2, None, None, success=False),
               req(3, 2.5, 4.0)]
    assert window(records, 1) == (1.0, 3.0)
    # N = 4, B = 1, k = 2 but only one finish time is known: no window.
    lost = [req(0, 1.0, 2.0), req(1, None, None), req(2, None, None), req(3, None, None)]
    assert mlenergy.tracker_window(lost, 1) is None
    assert mlenergy.tracker_window([], 1) is None
    with pytest.raises(ValueError):
        mlenergy.tracker_window(SIX, 0)


def test_avg_batch_size_is_the_time_average_of_running_requests():
    # Over SIX's window [1.2, 6.0] (4.8 s), running from the first token: request 0 for
    # 1.2-3.0 (1.8 s), 1 for 1.2-4.0 (2.8), 2 for 3.5-6.0 (2.5), 3 for 4.5-6.0 (1.5),
    # 4 and 5 not yet: 8.6 request-seconds / 4.8 s.
    assert mlenergy.avg_batch_size(SIX, 1.2, 6.0) == pytest.approx(8.6 / 4.8)
    # Where the engine said when it scheduled a request, that is when it starts running:
    # [0, 2]: request 0 runs 0.5-2.0 (1.5 s) -> 0.75.
    assert mlenergy.avg_batch_size([req(0, 1.0, 2.0, scheduled=0.5)], 0.0, 2.0) == pytest.approx(0.75)
    assert mlenergy.avg_batch_size(SIX, 2.0, 2.0) is None


def names(**kwargs):
    base = {"steady_duration_s": 40.0, "avg_batch": 8.0, "max_num_seqs": 8,
            "steady_energy_per_token_j": 0.5, "output_tokens_per_s": 100.0}
    base.update(kwargs)
    return {c.name: c.severity for c in mlenergy.failed_checks(**base)}


def test_a_clean_cycle_has_no_flags():
    assert names() == {}


def test_steady_state_duration_flag():
    assert names(steady_duration_s=29.9) == {"steady_state_duration": "error"}
    assert names(steady_duration_s=30.0) == {}
    assert names(steady_duration_s=None) == {"steady_state_duration": "error"}


def test_batch_size_saturation_flag():
    assert names(avg_batch=6.3) == {"batch_size_saturation": "warning"}  # 78.75% < 80%
    assert names(avg_batch=6.4) == {}  # exactly 80%


def test_metrics_valid_flag():
    assert names(steady_energy_per_token_j=100.5) == {"metrics_valid": "error"}
    assert names(steady_energy_per_token_j=100.0) == {}
    assert names(steady_energy_per_token_j=0.0) == {"metrics_valid": "error"}
    assert names(output_tokens_per_s=0.0) == {"metrics_valid": "error"}
    assert names(steady_energy_per_token_j=None) == {}  # energy not measured: nothing to judge


def test_power_range_flag():
    h100 = "NVIDIA H100 80GB HBM3"  # TDP 700 W in their map: readings in [70, 770] W
    assert names(device_name=h100, gpu_power_w=[70.0, 500.0, 770.0]) == {}
    assert names(device_name=h100, gpu_power_w=[69.0, 500.0]) == {"power_range": "warning"}
    assert names(device_name=h100, gpu_power_w=[771.0]) == {"power_range": "warning"}
    assert names(device_name="NVIDIA B200", gpu_power_w=[1050.0]) == {}  # 1.1 x 1000 W
    # Not in their map (a 350 W PCIe card, an L4): not judged.
    assert names(device_name="NVIDIA H100 PCIe", gpu_power_w=[20.0]) == {}
    assert names(device_name="NVIDIA L4", gpu_power_w=[20.0]) == {}


def test_temperature_range_flag():
    # 1 of 20 readings out of [20, 95] degC is 5%: an error; 1 of 21 (4.8%) is not.
    assert names(gpu_temperature_c=[60.0] * 19 + [96.0]) == {"temperature_range": "error"}
    assert names(gpu_temperature_c=[60.0] * 20 + [19.0]) == {}
    assert names(gpu_temperature_c=[20.0, 95.0]) == {}


def test_output_length_flag():
    # 3 of 10 outputs at the cap is 30%: a warning; 2 of 10 is not; no cap: not judged.
    assert names(output_lengths=[128] * 3 + [50] * 7, max_output_tokens=128) == \
        {"output_length": "warning"}
    assert names(output_lengths=[128] * 2 + [50] * 8, max_output_tokens=128) == {}
    assert names(output_lengths=[128] * 10, max_output_tokens=None) == {}


def test_request_success_flag_and_messages():
    checks = mlenergy.failed_checks(steady_duration_s=12.0, avg_batch=None, max_num_seqs=8,
                                    steady_energy_per_token_j=None, output_tokens_per_s=1.0,
                                    failed_requests=2)
    assert [(c.name, c.severity) for c in checks] == [("request_success", "error"),
                                                       ("steady_state_duration", "error")]
    assert checks[1].warning() == \
        "ML.ENERGY check steady_state_duration (error): steady state 12.00 s < 30 s"


def test_cycle_rows_carry_the_window_average_batch_and_flags(tmp_path):
    from test_protocol_validity import PowerMeter, cell_config

    from llm_energy.measure.protocol import CellRunner
    from llm_energy.telemetry.meters.base import WindowEnergy

    window = WindowEnergy(10.0, {"cpu": 100.0, "gpu": None, "dram": None}, {"cpu": "rapl"})
    runner = CellRunner(cell_config(tmp_path), "unused", meter=PowerMeter(1.0))  # batch_size 2
    row, _ = runner._cycle_rows(0, SIX, 0.0, 10.0, window, None, [], None)
    assert row["steady_state_rule"] == "mlenergy"
    assert (row["steady_state_start_s"], row["steady_state_end_s"]) == (1.2, 6.0)
    # No power samples: energy by time, 100 J x 4.8 s / 10 s. Tokens in (1.2, 6.0]: 3.0, 4.0,
    # 3.5, 6.0, 4.5 -> 5.
    assert row["steady_state_energy_j"] == pytest.approx(48.0)
    assert row["steady_state_output_tokens"] == 5
    assert row["avg_batch_size"] == pytest.approx(8.6 / 4.8)  # 90% of 2: no saturation flag
    assert row["mlenergy_flags"] == ["steady_state_duration"] and row["mlenergy_valid"] is False
    assert any(w.startswith("ML.ENERGY check steady_state_duration (error)") for w in row["warnings"])

    runner = CellRunner(cell_config(tmp_path, steady_state_rule="batch-full"), "unused",
                        meter=PowerMeter(1.0))
    row, _ = runner._cycle_rows(0, SIX, 0.0, 10.0, window, None, [], None)
    # Running from first tokens: 2 from 1.2 to 3.0, 1 until 3.5, 2 until 4.0, 1 until 4.5,
    # 2 until 6.0 ... the last moment two run is when request 4 ends at 8.0 (3 and 4 overlap
    # 6.5-7.0, 4 and 5 7.5-8.0).
    assert row["steady_state_rule"] == "batch-full"
    assert (row["steady_state_start_s"], row["steady_state_end_s"]) == (1.2, 8.0)


def test_summary_keeps_the_measured_average_batch():
    import pandas as pd
    from test_aggregate import _requests, _runs

    from llm_energy.analysis.summary import summarise

    new = _runs("aaaaaaaaaaa1", [0.1, 0.12])
    for row in new:
        row.update(steady_state_rule="mlenergy", avg_batch_size=1.5)
    old = _runs("aaaaaaaaaaa2", [0.1, 0.12])  # written before the rule: from request times
    summary = summarise(pd.DataFrame(new + old),
                        pd.DataFrame(_requests("aaaaaaaaaaa1", 2) + _requests("aaaaaaaaaaa2", 2)),
                        resamples=50).set_index("cell_id")
    assert summary.loc["aaaaaaaaaaa1", "avg_batch_size"] == pytest.approx(1.5)
    assert summary.loc["aaaaaaaaaaa2", "avg_batch_size"] == pytest.approx(2.0)


def test_cycle_without_a_window_says_so(tmp_path):
    from test_protocol_validity import PowerMeter, cell_config

    from llm_energy.measure.protocol import CellRunner
    from llm_energy.telemetry.meters.base import WindowEnergy

    window = WindowEnergy(10.0, {"cpu": 100.0, "gpu": None, "dram": None}, {"cpu": "rapl"})
    runner = CellRunner(cell_config(tmp_path), "unused", meter=PowerMeter(1.0))  # batch_size 2
    # N = 3, B = 2, k = 1: request 0 finishes (2.0) before the second first token (2.5).
    records = [req(0, 1.0, 2.0), req(1, 2.5, 4.0), req(2, 3.0, 5.0)]
    row, _ = runner._cycle_rows(0, records, 0.0, 10.0, window, None, [], None)
    assert row["steady_state_duration_s"] is None and row["avg_batch_size"] is None
    assert row["steady_state_energy_j"] is None
    assert any(w.startswith("no steady state by ML.ENERGY's rule (opens when 2 requests have "
                            "their first token, closes when 1 of 3 have finished)")
               for w in row["warnings"])
    assert "steady_state_duration" in row["mlenergy_flags"]
