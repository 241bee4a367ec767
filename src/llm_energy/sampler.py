"""Background telemetry: power, utilisation, temperature, memory and clocks at a fixed rate.

One daemon thread, one sample per device per tick, appended to lists: cheap enough to run
beside the workload (see bench/sampler_overhead.py). Absent sensors are recorded as None."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import psutil

from llm_energy.meters.estimate import busy_core_seconds

TIMESERIES_COLUMNS = ("t_s", "device", "power_w", "power_source", "temperature_c",
                      "utilization_pct", "memory_mb", "sm_clock_mhz")


@dataclass
class Sample:
    t_s: float
    device: str
    power_w: float | None
    power_source: str | None
    temperature_c: float | None
    utilization_pct: float | None
    memory_mb: float | None
    sm_clock_mhz: float | None


class CpuProbe:
    """CPU utilisation from /proc/stat deltas; power only as the configured estimate."""

    device = "cpu"

    def __init__(self, cpu_power_per_core_w: float | None) -> None:
        self.cpu_power_per_core_w = cpu_power_per_core_w
        self._process = psutil.Process()
        self._last = (time.perf_counter(), busy_core_seconds())
        self._cores = psutil.cpu_count() or 1

    def sample(self, t_s: float) -> Sample:
        busy = busy_core_seconds()
        last_t, last_busy = self._last
        self._last = (t_s, busy)
        elapsed = t_s - last_t
        busy_cores = max(0.0, (busy - last_busy) / elapsed) if elapsed > 0 else None
        utilization = None if busy_cores is None else min(100.0, 100.0 * busy_cores / self._cores)
        power = None
        if busy_cores is not None and self.cpu_power_per_core_w is not None:
            power = busy_cores * self.cpu_power_per_core_w
        return Sample(t_s, "cpu", power, "estimate" if power is not None else None, None,
                      utilization, self._process.memory_info().rss / 2**20, None)


class NvmlProbe:
    """One NVIDIA GPU through nvidia-ml-py."""

    def __init__(self, nvml: Any, index: int) -> None:
        self._nvml = nvml
        self._handle = nvml.nvmlDeviceGetHandleByIndex(index)
        self.device = f"gpu{index}"

    def _read(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception:  # a sensor that errors is recorded as absent for that sample
            return None

    def sample(self, t_s: float) -> Sample:
        nvml, h = self._nvml, self._handle
        power_mw = self._read(lambda: nvml.nvmlDeviceGetPowerUsage(h))
        temp = self._read(lambda: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU))
        util = self._read(lambda: nvml.nvmlDeviceGetUtilizationRates(h).gpu)
        mem = self._read(lambda: nvml.nvmlDeviceGetMemoryInfo(h).used / 2**20)
        clock = self._read(lambda: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM))
        return Sample(t_s, self.device, None if power_mw is None else power_mw / 1000.0,
                      "nvml-power" if power_mw is not None else None, temp, util, mem, clock)


class Sampler:
    def __init__(self, probes: list[Any], rate_hz: float) -> None:
        self.probes = probes
        self.period_s = 1.0 / rate_hz
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llm-energy-sampler", daemon=True)

    def _run(self) -> None:
        next_t = time.perf_counter()
        while not self._stop.is_set():
            now = time.perf_counter()
            for probe in self.probes:
                self.samples.append(probe.sample(now))
            next_t += self.period_s
            delay = next_t - time.perf_counter()
            if delay < 0:  # fell behind (e.g. suspended): skip missed ticks, keep the rate
                next_t = time.perf_counter()
                delay = 0
            self._stop.wait(delay)

    def sample_now(self, now: float) -> None:
        """An extra sample at a window edge, so every window has at least its two ends."""
        for probe in self.probes:
            self.samples.append(probe.sample(now))

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join()
        return self.samples


def default_probes(device: str, cpu_power_per_core_w: float | None,
                   gpu_indices: list[int] | None = None) -> list[Any]:
    probes: list[Any] = [CpuProbe(cpu_power_per_core_w)]
    if device == "cuda":
        try:
            import pynvml

            pynvml.nvmlInit()
            for index in gpu_indices or [0]:
                probes.append(NvmlProbe(pynvml, index))
        except Exception:
            pass
    return probes
