"""Background telemetry: power, utilisation, temperature, memory and clocks at a fixed rate.

One daemon thread, one sample per device per tick, appended to lists: cheap enough to run
beside the workload (see bench/sampler_overhead.py). Absent sensors are recorded as None; a
probe that raises loses that sample (a gap, flagged by the protocol's coverage check), never
the thread. The same tick also polls energy counters (`pollers`) so that none wraps twice
between two window edges."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from llm_energy.telemetry.meters.estimate import busy_core_seconds, cpu_cores
from llm_energy.telemetry.proctree import ProcessTreeCpu


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
    #: NVML clock-event reason bits (see meters.nvml.THROTTLE_REASONS); None off NVIDIA.
    throttle_reasons: int | None = None
    #: Memory clock, MHz (NVML); None off NVIDIA.
    memory_clock_mhz: float | None = None


class CpuProbe:
    """CPU utilisation of the machine from /proc/stat; with a per-core power, the `estimate`
    power of the cell's own process tree (what `EstimateMeter` charges).

    Busy times advance in 10 ms clock ticks, so a rate over a few milliseconds (an edge
    sample just after a tick) could read several cores' worth from one tick: rates are taken
    over at least `MIN_RATE_INTERVAL_S` (from an earlier sample), and the power never exceeds
    the model's ceiling (every logical core busy × per-core power)."""

    device = "cpu"
    #: Shortest interval a utilisation or power rate is computed over (10 clock ticks).
    MIN_RATE_INTERVAL_S = 0.1

    def __init__(self, cpu_power_per_core_w: float | None,
                 tree: ProcessTreeCpu | None = None) -> None:
        self.cpu_power_per_core_w = cpu_power_per_core_w
        self._process = psutil.Process()
        self._cores = cpu_cores()
        self._lock = threading.Lock()
        self._tree = tree if tree is not None or cpu_power_per_core_w is None \
            else ProcessTreeCpu()
        # (t_s, machine busy core-s, tree CPU s) of recent samples, oldest first.
        self._history: deque[tuple[float, float, float]] = deque(
            [(time.perf_counter(), busy_core_seconds(), self._tree_s())])

    def _tree_s(self) -> float:
        return self._tree.read_s() if self._tree is not None else 0.0

    def _reference(self, t_s: float) -> tuple[float, float, float]:
        """The latest earlier sample at least MIN_RATE_INTERVAL_S before t_s (else the oldest)."""
        reference = self._history[0]
        for item in self._history:
            if t_s - item[0] >= self.MIN_RATE_INTERVAL_S:
                reference = item
            else:
                break
        return reference

    def sample(self, t_s: float) -> Sample:
        # The sampler thread and edge samples (`Sampler.sample_now`) may call at once.
        with self._lock:
            busy, tree = busy_core_seconds(), self._tree_s()
            last_t, last_busy, last_tree = self._reference(t_s)
            self._history.append((t_s, busy, tree))
            while (len(self._history) > 2
                   and t_s - self._history[1][0] >= self.MIN_RATE_INTERVAL_S):
                self._history.popleft()
        elapsed = t_s - last_t
        busy_cores = max(0.0, (busy - last_busy) / elapsed) if elapsed > 0 else None
        utilization = None if busy_cores is None else min(100.0, 100.0 * busy_cores / self._cores)
        power = None
        if elapsed > 0 and self.cpu_power_per_core_w is not None:
            tree_cores = min(float(self._cores), max(0.0, (tree - last_tree) / elapsed))
            power = tree_cores * self.cpu_power_per_core_w
        return Sample(t_s, "cpu", power, "estimate" if power is not None else None, None,
                      utilization, self._process.memory_info().rss / 2**20, None)


class NvmlProbe:
    """One NVIDIA GPU of the job (`gpu`: a metered `Gpu` of `nvidia`, a `telemetry.nvidia.
    NvidiaGpus`): power and temperature through Zeus, clocks, clock-event reasons,
    utilisation and memory through the NVML getters Zeus lacks, on Zeus's GPU object."""

    def __init__(self, nvidia: Any, gpu: Any) -> None:
        self._nvidia = nvidia
        self._gpu = gpu
        self.device = gpu.label

    def _read(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception:  # a sensor that errors is recorded as absent for that sample
            return None

    def sample(self, t_s: float) -> Sample:
        hw, g = self._nvidia, self._gpu
        power_w = self._read(lambda: hw.power_w(g))
        return Sample(t_s, self.device, power_w, "nvml-power" if power_w is not None else None,
                      self._read(lambda: hw.temperature_c(g)),
                      self._read(lambda: hw.utilization_pct(g)),
                      self._read(lambda: hw.memory_used_mb(g)),
                      self._read(lambda: hw.clock_mhz(g, "sm")),
                      self._read(lambda: hw.clock_event_bits(g)),
                      self._read(lambda: hw.clock_mhz(g, "mem")))


class Sampler:
    def __init__(self, probes: list[Any], rate_hz: float,
                 pollers: list[Callable[[], None]] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.probes = probes
        self.pollers = list(pollers or [])
        self.period_s = 1.0 / rate_hz
        self.samples: list[Sample] = []
        self.errors = 0
        #: CPU time the sampler thread itself used (time.thread_time), set when it stops.
        self.thread_cpu_s: float | None = None
        self.clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llm-energy-sampler", daemon=True)

    def _tick(self, now: float) -> None:
        for poll in self.pollers:
            try:
                poll()
            except Exception:  # a failed poll is caught at the window edge
                self.errors += 1
        for probe in self.probes:
            try:
                self.samples.append(probe.sample(now))
            except Exception:  # lose the sample (a flagged gap), not the thread
                self.errors += 1

    def _run(self) -> None:
        cpu0 = time.thread_time()
        next_t = self.clock()
        while not self._stop.is_set():
            self._tick(self.clock())
            next_t += self.period_s
            delay = next_t - self.clock()
            if delay < 0:  # fell behind (e.g. suspended): skip missed ticks, keep the rate
                next_t = self.clock()
                delay = 0
            self._stop.wait(delay)
        self.thread_cpu_s = time.thread_time() - cpu0

    def sample_now(self, now: float) -> None:
        """An extra sample at a window edge, so every window has at least its two ends."""
        self._tick(now)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join()
        return self.samples


def default_probes(device: str, cpu_power_per_core_w: float | None,
                   nvidia: Any = None) -> list[Any]:
    """The CPU probe, plus one probe per NVIDIA GPU of the job (`nvidia`: the detection's
    `telemetry.nvidia.NvidiaGpus`)."""
    probes: list[Any] = [CpuProbe(cpu_power_per_core_w)]
    if device == "cuda" and nvidia is not None:
        probes.extend(NvmlProbe(nvidia, gpu) for gpu in nvidia.gpus)
    return probes
