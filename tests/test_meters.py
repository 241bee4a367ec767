import pytest

from llm_energy.telemetry.meters import EstimateMeter, ZeusMeter, detect_meter
from llm_energy.telemetry.meters.base import Meter


class FakeCounter(Meter):
    update_period_s = 0.0

    def __init__(self, readings):
        super().__init__()
        self._readings = iter(readings)

    @property
    def sources(self):
        return {"gpu": "nvml-counter"}

    def read_j(self):
        return {"gpu": next(self._readings)}


def test_window_energy_is_counter_difference_with_source():
    meter = FakeCounter([100.0, 130.5])
    meter.begin_window("w")
    window = meter.end_window("w")
    assert window.energy_j == {"gpu": 30.5, "cpu": None, "dram": None}
    assert window.total_energy_j == 30.5 and window.energy_source == "nvml-counter"


def test_counter_going_backwards_is_flagged_never_negative():
    meter = FakeCounter([100.0, 90.0])
    meter.begin_window("w")
    window = meter.end_window("w")
    assert window.energy_j["gpu"] is None and window.total_energy_j is None
    assert any("backwards" in w for w in window.warnings)


def test_estimate_meter_is_labelled_and_positive_under_load():
    meter = EstimateMeter(cpu_power_per_core_w=10.0)
    meter.begin_window("busy")
    x = 0
    for i in range(2_000_000):
        x += i
    window = meter.end_window("busy")
    assert window.source == {"cpu": "estimate"}
    assert window.energy_j["cpu"] > 0
    assert "estimated" in meter.warning


def test_zeus_without_sensors_is_not_a_meter():
    # This machine has no GPU and no RAPL: Zeus would report 0 J; we must not use it.
    assert ZeusMeter.probe("cpu") is None
    assert isinstance(detect_meter("cpu", "auto", 10.0), EstimateMeter)


def test_requested_missing_source_is_an_error():
    with pytest.raises(RuntimeError, match="nvml-counter.*not available"):
        detect_meter("cuda", "nvml-counter", 10.0)


def test_window_below_resolution_is_not_reported_as_zero_joules():
    # The estimate reads /proc/stat ticks: a window shorter than a tick may see no change.
    meter = FakeCounter([100.0, 100.0])
    meter.update_period_s = 0.1  # a window of microseconds is far below it
    meter.begin_window("short")
    window = meter.end_window("short")
    assert window.energy_j["gpu"] is None and window.total_energy_j is None
    assert any("did not advance" in w for w in window.warnings)


def test_estimate_counter_does_not_step_back_when_only_idle_time_advances():
    # CI failure: on a quiet machine, `total - idle` of two ~1e6 s floats stepped back by
    # 1e-12 s between reads, and the idle window was dropped as "counter went backwards".
    from collections import namedtuple

    from llm_energy.telemetry.meters.estimate import busy_core_seconds

    Times = namedtuple("Times", "user nice system idle iowait irq softirq steal guest guest_nice")
    before = Times(812345.67, 12.34, 98765.43, 7654321.09, 321.5, 0.0, 456.78, 3.21, 0.0, 0.0)
    after = before._replace(idle=before.idle + 0.01, iowait=before.iowait + 0.01)
    assert busy_core_seconds(after) == busy_core_seconds(before)
    assert busy_core_seconds(before._replace(user=before.user + 0.01)) > busy_core_seconds(before)


def test_estimate_counter_is_monotonic_on_this_machine():
    from llm_energy.telemetry.meters.estimate import busy_core_seconds

    readings = [busy_core_seconds() for _ in range(20_000)]
    assert all(b >= a for a, b in zip(readings, readings[1:]))
