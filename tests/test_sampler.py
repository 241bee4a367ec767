"""The background sampler: survives failing probes (a gap, not a dead thread), polls energy
counters every tick, takes edge samples on demand; coverage and gaps are measured exactly."""

import time

import pytest
from fake_hw import FakeGpu, FakeNvml, nvidia_for

from llm_energy.measure import metrics
from llm_energy.telemetry.sampler import (
    CpuProbe,
    NvmlProbe,
    Sample,
    Sampler,
    default_probes,
)


class FlakyProbe:
    """Raises on every other call: half the samples are lost."""

    device = "gpu0"

    def __init__(self):
        self.calls = 0

    def sample(self, t_s):
        self.calls += 1
        if self.calls % 2 == 0:
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
        return Sample(t_s, self.device, 100.0, "nvml-power", None, None, None, None)


def test_failing_probe_leaves_gaps_and_the_thread_keeps_running():
    probe, polls = FlakyProbe(), []
    sampler = Sampler([probe], rate_hz=200, pollers=[lambda: polls.append(1)]).start()
    time.sleep(0.3)
    samples = sampler.stop()
    assert probe.calls >= 10                     # the thread outlived the first exception
    assert sampler.errors == probe.calls // 2
    assert len(samples) == probe.calls - probe.calls // 2
    assert len(polls) == probe.calls             # one poll per tick
    assert sampler.thread_cpu_s is not None and sampler.thread_cpu_s >= 0


def test_sample_now_records_every_probe_at_the_given_time():
    sampler = Sampler([CpuProbe(10.0)], rate_hz=1)
    time.sleep(0.02)
    now = time.perf_counter()
    sampler.sample_now(now)
    assert [s.t_s for s in sampler.samples] == [now]
    assert sampler.samples[0].power_source == "estimate" and sampler.samples[0].power_w >= 0


def test_nvml_probe_reads_the_jobs_gpu_with_throttle_bits():
    # Power and temperature through (a fake of) Zeus's GPU object, clocks and clock-event
    # bits through the NVML getters Zeus lacks, on that object's handle.
    nvml = FakeNvml([FakeGpu("GPU-a", [0]), FakeGpu("GPU-b", [0], power_mw=150_500.0,
                                                    temperature_c=61.0, throttle=0x44)])
    nvidia = nvidia_for(nvml, ["GPU-b"])
    probes = default_probes("cuda", None, nvidia)
    assert [p.device for p in probes] == ["cpu", "gpu0"]
    s = probes[1].sample(1.0)
    assert (s.power_w, s.temperature_c, s.throttle_reasons, s.sm_clock_mhz,
            s.memory_clock_mhz) == (150.5, 61.0, 0x44, 1400, 2619)
    assert (s.utilization_pct, s.memory_mb) == (50, 1024)
    assert isinstance(NvmlProbe(nvidia, nvidia.gpus[0]), NvmlProbe)
    assert default_probes("cuda", None, None)[0].device == "cpu"   # no NVIDIA GPUs: CPU only


def test_nvml_probe_falls_back_when_zeus_power_is_not_supported():
    # Zeus reads power through NVML field values (drivers >= 530): on an older driver the
    # probe uses nvmlDeviceGetPowerUsage, and stops asking Zeus after the first failure.
    nvml = FakeNvml([FakeGpu("GPU-a", [0], power_mw=90_000.0)])
    nvidia = nvidia_for(nvml, ["0"])
    calls = []

    def unsupported(index):
        calls.append(index)
        raise RuntimeError("Not Supported")

    nvidia.zeus.get_instant_power_usage = unsupported
    probe = NvmlProbe(nvidia, nvidia.gpus[0])
    assert [probe.sample(t).power_w for t in (1.0, 2.0)] == [90.0, 90.0]
    assert calls == [0] and nvidia.fallbacks == {"power"}


def test_coverage_and_gaps_exact():
    regular = [10.0 + 0.1 * k for k in range(21)]
    assert metrics.coverage(regular, 10.0, 12.0, 0.1) == pytest.approx(1.0)
    # samples 10.0..10.5 then nothing until 12.0: the 1.5 s gap leaves 1.4 s uncovered.
    gap = [10.0 + 0.1 * k for k in range(6)] + [12.0]
    assert metrics.coverage(gap, 10.0, 12.0, 0.1) == pytest.approx(1 - 1.4 / 2.0)
    assert metrics.max_gap_s(gap, 10.0, 12.0) == pytest.approx(1.5)
    assert metrics.coverage([], 10.0, 12.0, 0.1) == pytest.approx(0.05)
