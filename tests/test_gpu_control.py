"""GPU power limit and clocks (telemetry/gpu_control.py) against a fake with Zeus 0.16's GPU
manager interface (tests/fake_zeus.py): checked before anything is set, applied, read back
with a mismatch flag, and restored after a normal end, an exception, a permission error, a
crash that left a marker, and a child killed with SIGKILL. No real GPU is touched."""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from fake_zeus import DEFAULT_MW, FakeZeusGPUs

from llm_energy.telemetry import gpu_control as gc
from llm_energy.telemetry import gpu_state
from llm_energy.telemetry.gpu_control import (
    ClockRange,
    GpuControl,
    GpuControlError,
    GpuLocks,
    GpuSettings,
    NoPermission,
    OutOfRange,
)

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"


def control(tmp_path, settings: GpuSettings, n: int = 1, permission: bool = True):
    fake = FakeZeusGPUs(tmp_path / "gpus.json", n=n, permission=permission)
    ctl = GpuControl(fake, gc.gpu_idents(fake, nvml=fake), settings, tmp_path / "state",
                     nvml=fake, log=lambda _m: None)
    return fake, ctl


def test_fake_has_the_signatures_of_zeus_gpus():
    """The fake's methods exist on Zeus's GPUs with the same parameters (so the code under
    test calls what Zeus 0.16 really offers)."""
    from zeus.device.gpu.common import GPUs

    for name in ("get_power_management_limit_constraints", "get_power_management_limit",
                 "set_power_management_limit", "reset_power_management_limit",
                 "get_supported_memory_clocks", "get_supported_graphics_clocks",
                 "set_gpu_locked_clocks", "reset_gpu_locked_clocks",
                 "set_memory_locked_clocks", "reset_memory_locked_clocks"):
        ours = list(inspect.signature(getattr(FakeZeusGPUs, name)).parameters)
        theirs = list(inspect.signature(getattr(GPUs, name)).parameters)
        assert ours == theirs, name


def test_clock_range_parses_a_locked_value_a_pair_and_a_mapping():
    assert ClockRange.parse(1410) == ClockRange(1410, 1410)
    assert ClockRange.parse([1200, 1410]) == ClockRange(1200, 1410)
    assert ClockRange.parse({"min_mhz": 1200, "max_mhz": 1410}) == ClockRange(1200, 1410)
    assert str(ClockRange(1410, 1410)) == "1410" and str(ClockRange(1200, 1410)) == "1200-1410"
    for bad in ([1410, 1200], [0, 10], "fast", True):
        with pytest.raises(ValueError):
            ClockRange.parse(bad)
    settings = GpuSettings.from_measurement({"gpu_power_limit_w": 300, "gpu_sm_clock_mhz": [990, 1410]})
    assert settings == GpuSettings(300.0, ClockRange(990, 1410), None)
    assert GpuSettings.from_measurement({}).empty


def test_apply_sets_through_zeus_in_mw_and_reads_back(tmp_path):
    settings = GpuSettings(300.0, ClockRange(1410, 1410), ClockRange(1593, 1593))
    fake, ctl = control(tmp_path, settings, n=2)
    ctl.apply()
    for i in range(2):
        g = fake.gpu(i)
        assert g["limit_mw"] == 300_000 and g["sm_lock"] == [1410, 1410] and g["mem_lock"] == [1593, 1593]
    # memory clock before SM clock (supported graphics clocks depend on it), the cap last
    assert fake.calls()[:3] == ["set_memory_locked_clocks", "set_gpu_locked_clocks",
                                "set_power_management_limit"]
    readings = ctl.read_back()
    assert readings[0] == {"gpu": "gpu0", "power_limit_w": 300.0, "sm_clock_mhz": 1410.0,
                           "memory_clock_mhz": 1593.0, "throttle_reasons": 0}
    assert gc.mismatches(settings, readings) == []
    columns = gc.run_columns(settings, readings)
    assert columns["gpu_power_limit_read_w"] == 300.0 and columns["gpu_settings_mismatch"] is False
    assert ctl.restore() == []
    assert fake.is_default(0) and fake.is_default(1)
    assert not list((tmp_path / "state").glob("*.json"))


def test_out_of_range_fails_before_anything_is_set_and_names_the_range(tmp_path):
    fake, ctl = control(tmp_path, GpuSettings(150.0, ClockRange(2100, 2100)))
    with pytest.raises(OutOfRange) as err:
        ctl.apply()
    message = str(err.value)
    assert "gpu_power_limit_w=150 W is outside gpu0 (GPU-fake-0)'s allowed range 200-700 W" in message
    assert "gpu_sm_clock_mhz=2100 MHz is outside" in message and "345-1980 MHz" in message
    assert not any(c.startswith("set_") for c in fake.calls())
    assert fake.is_default() and not list((tmp_path / "state").glob("*.json"))


def test_memory_clock_out_of_range(tmp_path):
    _fake, ctl = control(tmp_path, GpuSettings(memory_clock=ClockRange(1000, 3000)))
    with pytest.raises(OutOfRange, match="gpu_memory_clock_mhz=1000-3000 MHz is outside .* 1593-2619 MHz"):
        ctl.validate()


def test_permission_error_says_how_to_run_zeusd_and_sets_nothing(tmp_path):
    fake, ctl = control(tmp_path, GpuSettings(300.0), permission=False)
    with pytest.raises(NoPermission) as err:
        ctl.apply()
    assert "ZeusGPUNoPermissionError" in str(err.value)
    assert "zeusd serve --socket-path" in str(err.value) and "ZEUSD_SOCK_PATH" in str(err.value)
    assert fake.gpu(0)["limit_mw"] == DEFAULT_MW


def test_read_back_mismatch_is_flagged_with_the_clock_events(tmp_path):
    settings = GpuSettings(300.0, ClockRange(1410, 1410))
    fake, ctl = control(tmp_path, settings)
    ctl.apply()
    state = fake.load()
    state["gpus"][0].update(enforce_offset_w=-50.0, sm_lock=[1005, 1005], throttle=0x04 | 0x20)
    fake.save(state)
    readings = ctl.read_back()
    lines = gc.mismatches(settings, readings)
    assert lines == ["gpu0: power limit read back 250 W, asked 300 W",
                     ("gpu0: SM clock read back 1005 MHz, asked 1410 MHz "
                      "(clock events: sw power cap, sw thermal)")]
    columns = gc.run_columns(settings, readings)
    assert columns["gpu_settings_mismatch"] is True
    assert columns["gpu_throttle_reasons"] == ["sw power cap", "sw thermal"]
    # within the tolerances: no flag
    assert gc.mismatches(settings, [{"gpu": "gpu0", "power_limit_w": 300.5,
                                     "sm_clock_mhz": 1420.0}]) == []
    # nothing asked: read-backs recorded, no flag either way
    assert gc.run_columns(GpuSettings(), readings)["gpu_settings_mismatch"] is None
    ctl.restore()


def test_cycle_readings_take_the_median_clock_of_the_cycle_samples():
    def sample(t, sm, bits, dev="gpu0"):
        return SimpleNamespace(t_s=t, device=dev, sm_clock_mhz=sm, memory_clock_mhz=2619.0,
                               throttle_reasons=bits)
    samples = [sample(0.5, 345.0, 1), sample(1.0, 1400.0, 0), sample(1.5, 1410.0, 4),
               sample(2.0, 1410.0, 0), sample(2.0, 900.0, 0, "gpu1"), sample(3.5, 345.0, 1)]
    point = [{"gpu": "gpu0", "power_limit_w": 300.0, "sm_clock_mhz": 345.0,
              "memory_clock_mhz": 2619.0, "throttle_reasons": 1}]
    (row,) = gc.cycle_readings(point, samples, 1.0, 2.0)
    assert row["sm_clock_mhz"] == 1410.0 and row["throttle_reasons"] == 4


def test_exception_during_apply_restores_what_was_set(tmp_path, monkeypatch):
    settings = GpuSettings(300.0, ClockRange(1410, 1410))
    fake, ctl = control(tmp_path, settings)

    def broken(*_a, **_k):
        raise RuntimeError("driver hiccup")
    monkeypatch.setattr(fake, "set_power_management_limit", broken)
    with pytest.raises(GpuControlError, match="driver hiccup"):
        ctl.apply()
    assert fake.is_default() and not list((tmp_path / "state").glob("*.json"))


def test_marker_left_by_a_crash_is_restored_by_the_next_cell(tmp_path):
    fake, first = control(tmp_path, GpuSettings(250.0, ClockRange(1200, 1410)))
    first.apply()  # ... and the process "crashes": no restore
    assert fake.gpu(0)["limit_mw"] == 250_000
    marker = json.loads((tmp_path / "state" / "GPU-fake-0.json").read_text())
    assert marker["pid"] == os.getpid() and set(marker["knobs"]) == {"power_limit", "sm_clock"}
    # the next cell on that GPU asks for nothing: it still restores before measuring
    log: list[str] = []
    nxt = GpuControl(fake, ["GPU-fake-0"], GpuSettings(), tmp_path / "state", nvml=fake, log=log.append)
    nxt.apply()
    assert fake.is_default() and "restoring defaults" in log[0]
    assert not (tmp_path / "state" / "GPU-fake-0.json").exists()
    # knobs that were never set by us are never reset (an administrator's setting survives)
    assert "reset_memory_locked_clocks" not in fake.calls()


def test_a_marker_that_cannot_be_restored_stops_the_next_cell(tmp_path, monkeypatch):
    fake, first = control(tmp_path, GpuSettings(250.0))
    first.apply()
    monkeypatch.setattr(fake, "reset_power_management_limit",
                        lambda *_a, **_k: (_ for _ in ()).throw(RuntimeError("busy")))
    nxt = GpuControl(fake, ["GPU-fake-0"], GpuSettings(), tmp_path / "state", nvml=fake,
                     log=lambda _m: None)
    with pytest.raises(GpuControlError, match="could not be reset.*busy"):
        nxt.apply()
    assert (tmp_path / "state" / "GPU-fake-0.json").exists()


CHILD = """
import sys, time
sys.path[:0] = [{tests!r}, {src!r}]
from fake_zeus import FakeZeusGPUs
from llm_energy.telemetry.gpu_control import GpuControl, GpuSettings, ClockRange
fake = FakeZeusGPUs({state!r})
GpuControl(fake, ["GPU-fake-0"], GpuSettings(300.0, ClockRange(1410, 1410)), {state_dir!r},
           nvml=fake, log=lambda m: None).apply()
print("applied", flush=True)
time.sleep(60)
"""


def _spawn_child(tmp_path) -> subprocess.Popen:
    FakeZeusGPUs(tmp_path / "gpus.json")
    code = CHILD.format(tests=str(TESTS), src=str(SRC), state=str(tmp_path / "gpus.json"),
                        state_dir=str(tmp_path / "state"))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "applied"
    return child


def test_parent_restores_after_the_child_is_killed_with_sigkill(tmp_path, monkeypatch):
    child = _spawn_child(tmp_path)
    fake = FakeZeusGPUs(tmp_path / "gpus.json")
    assert fake.gpu(0)["limit_mw"] == 300_000
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    assert fake.gpu(0)["sm_lock"] == [1410, 1410]  # a killed process restores nothing itself
    # markers of other processes are left alone
    assert gc.restore_from_markers(tmp_path / "state", fake, ["GPU-fake-0"], pid=child.pid + 1,
                                   log=lambda _m: None) == []
    assert not fake.is_default()
    monkeypatch.setattr(gc, "zeus_gpus", lambda: fake)
    monkeypatch.setattr(gc, "gpu_idents", lambda gpus, nvml=None: ["GPU-fake-0"])
    measurement = {"device": "cuda", "gpu_state_dir": str(tmp_path / "state")}
    assert gc.restore_after_child(measurement, child.pid, log=lambda _m: None) == []
    assert fake.is_default() and not list((tmp_path / "state").glob("*.json"))


def test_restore_after_child_does_not_open_the_gpus_without_a_marker(tmp_path, monkeypatch):
    def no_zeus():
        raise AssertionError("Zeus opened without a marker")
    monkeypatch.setattr(gc, "zeus_gpus", no_zeus)
    assert gc.restore_after_child({"device": "cuda", "gpu_state_dir": str(tmp_path)}, 123) == []
    assert gc.restore_after_child({"device": "cpu"}, 123) == []


def test_locks_exclusive_for_a_changing_cell_shared_for_measuring_ones(tmp_path):
    with GpuLocks(tmp_path, ["GPU-a"], exclusive=False), \
            GpuLocks(tmp_path, ["GPU-a"], exclusive=False), \
            pytest.raises(GpuControlError, match="held by another cell"):
            GpuLocks(tmp_path, ["GPU-a"], exclusive=True, wait_s=0.2, poll_s=0.05).__enter__()
    with GpuLocks(tmp_path, ["GPU-a"], exclusive=True):
        with pytest.raises(GpuControlError, match="gpu_control resource"):
            GpuLocks(tmp_path, ["GPU-a"], exclusive=False, wait_s=0.2, poll_s=0.05).__enter__()
        with GpuLocks(tmp_path, ["GPU-b"], exclusive=True):  # another GPU: free
            pass
    with GpuLocks(tmp_path, ["GPU-a"], exclusive=True):  # released on exit
        pass


def test_lock_is_released_when_its_holder_is_killed(tmp_path):
    code = (f"import sys, time; sys.path.insert(0, {str(SRC)!r})\n"
            "from llm_energy.telemetry.gpu_control import GpuLocks\n"
            f"held = GpuLocks({str(tmp_path)!r}, ['GPU-a'], exclusive=True).__enter__()\n"
            "print('locked', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(GpuControlError):
            GpuLocks(tmp_path, ["GPU-a"], exclusive=True, wait_s=0.2, poll_s=0.05).__enter__()
    finally:
        child.kill()
        child.wait()
    start = time.monotonic()
    with GpuLocks(tmp_path, ["GPU-a"], exclusive=True, wait_s=5):
        assert time.monotonic() - start < 5


def test_a_file_system_without_flock_runs_unlocked_with_a_note(tmp_path, monkeypatch):
    import errno

    def no_flock(*_a):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(gpu_state.fcntl, "flock", no_flock)
    with GpuLocks(tmp_path, ["GPU-a"], exclusive=True) as locks:
        assert len(locks.notes) == 1 and "not locked" in locks.notes[0]
        assert "No locks available" in locks.notes[0]
