"""On a real NVIDIA GPU, read through Zeus's device layer (telemetry/nvidia.py): the energy
counter and integrated power agree on a real window, detection meters only the visible GPU(s),
and the health queries answer. Skipped, with the
reason, where NVML finds no GPU. Loads the GPU with torch when torch has CUDA; otherwise the
window is idle (still a real cross-check of the two sources)."""

from __future__ import annotations

import time

import pytest

from llm_energy.telemetry.meters import detect
from llm_energy.telemetry.meters.nvml import (
    NvmlCounterMeter,
    NvmlPowerMeter,
    other_processes,
    temperatures_c,
)
from llm_energy.telemetry.sampler import Sampler, default_probes

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def nvml():
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except Exception as exc:  # any NVML failure means: no GPU here
        pytest.skip(f"needs a real NVIDIA GPU (NVML: {type(exc).__name__}: {exc})")
    if count == 0:
        pytest.skip("needs a real NVIDIA GPU (NVML sees none)")
    return pynvml


def _busy(duration_s: float) -> str:
    try:
        import torch

        if not torch.cuda.is_available():
            raise ImportError
    except ImportError:
        time.sleep(duration_s)
        return "idle"
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    end = time.perf_counter() + duration_s
    while time.perf_counter() < end:
        for _ in range(20):
            a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()
    return "matmul"


def test_detect_uses_the_counter_of_the_visible_gpu_only(nvml, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    d = detect("cuda", "auto", 10.0, nvml=nvml)
    assert d.meter.sources.get("gpu") == "nvml-counter", d.notes
    assert len(d.gpus) == 1 and d.gpus[0].ident.startswith("GPU-")
    assert type(d.nvidia.zeus).__name__ == "NVIDIAGPUs"   # Zeus's own manager
    assert [g.gpu_index for g in d.nvidia.zeus.gpus] == [0]


@pytest.mark.parametrize("seconds", [8.0])
def test_counter_and_integrated_power_agree_on_a_real_window(nvml, monkeypatch, seconds):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    d = detect("cuda", "nvml-counter", 10.0, nvml=nvml)
    counter = NvmlCounterMeter(d.nvidia)
    period_s = 0.05
    power = NvmlPowerMeter(d.gpus, period_s)
    sampler = Sampler(default_probes("cuda", None, d.nvidia), 1 / period_s,
                      pollers=[counter.poll]).start()
    power.attach_sampler(sampler)
    try:
        time.sleep(1.0)
        counter.begin_window("w")
        power.begin_window("w")
        sampler.sample_now(time.perf_counter())
        load = _busy(seconds)
        sampler.sample_now(time.perf_counter())
        by_counter = counter.end_window("w")
        by_power = power.end_window("w")
    finally:
        sampler.stop()
    c, p = by_counter.energy_j["gpu"], by_power.energy_j["gpu"]
    print(f"\n{load} window {by_counter.duration_s:.2f} s: nvml-counter {c:.1f} J "
          f"({c / by_counter.duration_s:.1f} W), nvml-power {p:.1f} J "
          f"({p / by_power.duration_s:.1f} W), sampler thread {sampler.thread_cpu_s:.3f} s CPU, "
          f"NVML fallbacks for Zeus getters: {sorted(d.nvidia.fallbacks) or 'none'}")
    assert c is not None and c > 0 and p is not None and p > 0
    assert by_counter.warnings == [], by_counter.warnings
    # NVML power is averaged over up to 1 s on recent GPUs: the integral lags at the edges.
    assert abs(c - p) / c < 0.15


def test_health_queries_answer_on_a_real_gpu(nvml, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    d = detect("cuda", "auto", 10.0, nvml=nvml)
    temps = temperatures_c(d.nvidia)
    assert all(t is not None and 5 < t < 110 for t in temps.values()), temps
    assert isinstance(d.nvidia.clock_event_bits(d.gpus[0]), int)
    assert isinstance(other_processes(d.nvidia, set()), list)
    assert d.nvidia.power_limit_w(d.gpus[0]) > 0 and d.nvidia.name(d.gpus[0])


def test_gpu_control_reads_limits_and_settings_without_changing_them(nvml, monkeypatch):
    """Read only, through the GPU-control code path (Zeus's device layer + NVML getters): the
    power-limit constraints, the enforced limit, supported clocks, current clocks and clock-
    event reasons. No setter or reset is called: a lent GPU's settings must not change."""
    from llm_energy.telemetry import gpu_control as gc

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    gpus = gc.zeus_gpus()
    settings = gc.GpuSettings(power_limit_w=1.0, sm_clock=gc.ClockRange(1, 1),
                              memory_clock=None)
    limits = gc.device_limits(gpus, 0, settings)
    (reading,) = gc.read_back(gpus)[:1]
    print(f"\n{gc.gpu_idents(gpus)[0]}: power limit {limits.power_limit_w} W, enforced "
          f"{reading['power_limit_w']} W; SM clocks {limits.sm_clock_mhz} MHz, memory clocks "
          f"{limits.memory_clock_mhz} MHz; now SM {reading['sm_clock_mhz']} MHz, memory "
          f"{reading['memory_clock_mhz']} MHz, clock events "
          f"{gc.reason_names(reading['throttle_reasons'])}")
    low, high = limits.power_limit_w
    assert 0 < low <= reading["power_limit_w"] <= high
    assert limits.sm_clock_mhz is not None and limits.memory_clock_mhz is not None
    assert reading["sm_clock_mhz"] is not None and reading["memory_clock_mhz"] is not None
    assert isinstance(reading["throttle_reasons"], int)
    # an out-of-range value is refused by the check, before anything could be set
    assert any("allowed range" in line for line in gc.check(settings, limits, "gpu0"))


def test_uuid_prefix_index_and_full_uuid_name_the_same_real_gpu(nvml, monkeypatch):
    """NVML's own lookup answers "Not Found" for a UUID prefix; CUDA accepts a unique one."""
    from llm_energy.telemetry.meters.nvml import job_gpus

    uuid = job_gpus(nvml, ["0"])[0].ident
    same = [job_gpus(nvml, [form])[0] for form in ("0", uuid, uuid[:12])]
    assert {g.ident for g in same} == {uuid} and {g.nvml_index for g in same} == {0}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", uuid[:12])
    d = detect("cuda", "auto", 10.0, nvml=nvml)
    assert d.meter.sources.get("gpu") in ("nvml-counter", "nvml-power") and d.gpus[0].ident == uuid
