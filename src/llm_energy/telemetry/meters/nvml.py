"""NVIDIA GPU meters and health queries on the job's GPUs, read through Zeus's device layer
(`telemetry/nvidia.py`: the same Zeus GPU objects that set power limits and clocks): the
energy counter, power samples integrated (the fallback for pre-Volta GPUs and a cross-check),
and the preflight/health queries (other processes, temperature).

Our own checks stay on top of Zeus's raw readings (`base.CounterTrack`): a window shorter
than 10x the counter's update period is flagged, a counter that goes backwards (driver reload)
or stalls invalidates the window, a failed read is a flag, and no window ever reports a
silent 0 J. The GPUs come in as an `NvidiaGpus` (or a fake with its interface) so that tests
drive every path."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from llm_energy.telemetry import integrate as metrics
from llm_energy.telemetry.meters.base import DOMAINS, CounterTrack, Meter, WindowEnergy
from llm_energy.telemetry.meters.gpu_ids import (  # noqa: F401 - re-exported
    Gpu,
    GpuIdError,
    NoGpus,
    job_gpus,
    parse_visible_devices,
    visible_gpu_ids,
)
from llm_energy.telemetry.nvml_getters import load_nvml  # noqa: F401 - re-exported

if TYPE_CHECKING:
    from llm_energy.telemetry.nvidia import NvidiaGpus


class NvmlCounterMeter(Meter):
    """The GPUs' total-energy counters (NVML's, mJ since driver load, read with Zeus's
    `get_total_energy_consumption`), summed over the job's GPUs.

    The 64-bit counter does not wrap in practice; a lower reading is a reset (driver reload)
    or a glitch, so the window is flagged rather than guessed."""

    # The counter advances with the driver's power sampling: ~20-100 ms depending on the GPU.
    update_period_s = 0.1
    detects_stall = True
    # The 64-bit counter cannot wrap, so polls only catch resets inside long windows; a read
    # costs ~5 ms of CPU on an H100 (measured), so poll rarely.
    poll_interval_s = 10.0

    def __init__(self, nvidia: NvidiaGpus, clock: Callable[[], float] | None = None,
                 poll_interval_s: float | None = None) -> None:
        super().__init__(*(c for c in (clock,) if c is not None))
        if poll_interval_s is not None:
            self.poll_interval_s = poll_interval_s
        self.nvidia = nvidia
        self.gpus = nvidia.gpus
        log: list[str] = []
        self._tracks = {g.label: CounterTrack(f"{g.label} (NVML)", fault_log=log)
                        for g in self.gpus}

    @property
    def sources(self) -> dict[str, str]:
        return {"gpu": "nvml-counter"}

    def tracks(self) -> dict[str, CounterTrack]:
        # The GPUs share one fault log: a fault on any of them invalidates the gpu domain.
        return {"gpu": next(iter(self._tracks.values()))}

    def read_j(self) -> dict[str, float]:
        now = self.clock()
        total = 0.0
        for gpu in self.gpus:
            mj = self.nvidia.energy_mj(gpu)
            total += self._tracks[gpu.label].update(mj / 1000.0, now)
        return {"gpu": total}

    def _poll(self) -> None:
        self.read_j()


class NvmlPowerMeter(Meter):
    """GPU energy by trapezoidal integration of the sampler's NVML power samples, with
    linear interpolation at the window edges (`metrics.integrate_power`).

    Needs the sampler attached (`attach_sampler`) and running; the protocol also takes a
    sample at each cycle edge. Windows with fewer than 2 power samples per GPU, or whose
    samples cover less than 95% of the window, are flagged."""

    def __init__(self, gpus: list[Gpu], sample_period_s: float,
                 clock: Callable[[], float] | None = None) -> None:
        super().__init__(*(c for c in (clock,) if c is not None))
        self.gpus = gpus
        self.sample_period_s = sample_period_s
        # Power readings are averages over the driver's own window; the sampler's period
        # bounds what a window can resolve.
        self.update_period_s = max(0.1, sample_period_s)
        self._sampler: Any = None

    @property
    def sources(self) -> dict[str, str]:
        return {"gpu": "nvml-power"}

    def attach_sampler(self, sampler: Any) -> None:
        self._sampler = sampler

    def begin_window(self, name: str) -> None:
        from llm_energy.telemetry.meters.base import _OpenWindow

        self._open[name] = _OpenWindow(self.clock(), self.wall_clock(), {}, None, {})

    def end_window(self, name: str) -> WindowEnergy:
        opened, duration_s, warnings = self._edges(name)
        t0, t1 = opened.t0_s, opened.t0_s + max(duration_s, 0.0)
        energy: dict[str, float | None] = {d: None for d in DOMAINS}
        samples = list(self._sampler.samples) if self._sampler is not None else []
        total = 0.0
        ok = duration_s >= 0
        for gpu in self.gpus:
            profile = [(s.t_s, s.power_w) for s in samples
                       if s.device == gpu.label and s.power_w is not None]
            inside = [t for t, _ in profile if t0 <= t <= t1]
            if len(inside) < 2:
                warnings.append(f"window '{name}': {len(inside)} NVML power sample(s) of "
                                f"{gpu.label} (< 2); gpu energy not reported")
                ok = False
                continue
            cover = metrics.coverage([t for t, _ in profile], t0, t1, self.sample_period_s)
            if cover < 0.95:
                warnings.append(f"window '{name}': NVML power samples of {gpu.label} cover "
                                f"{cover:.0%} of the window (< 95%)")
            # Integrate only over samples near the window: holding a value far outside it
            # would bridge a gap with a stale reading.
            near = [(t, p) for t, p in profile
                    if t0 - 2 * self.sample_period_s <= t <= t1 + 2 * self.sample_period_s]
            total += metrics.integrate_power(near, t0, t1)
        if ok:
            energy["gpu"] = total
        return WindowEnergy(max(duration_s, 0.0), energy, dict(self.sources), warnings)


# ---------------------------------------------------------------- preflight and health

#: Clock-event reasons that mean the GPU ran slower than it would have (NVML bit masks).
THROTTLE_REASONS = {
    0x08: "hw slowdown", 0x20: "sw thermal", 0x40: "hw thermal", 0x80: "hw power brake",
}
POWER_CAP_REASON = 0x04


def other_processes(nvidia: NvidiaGpus, own_pids: set[int]) -> list[str]:
    """'gpu0: pid 1234 (2048 MiB)' for each compute process of someone else on the job's
    GPUs; an unsupported query (some MIG setups, containers without PID namespace) is noted."""
    found = []
    for gpu in nvidia.gpus:
        try:
            procs = nvidia.processes(gpu)
        except Exception as exc:
            found.append(f"{gpu.label}: could not list processes ({type(exc).__name__})")
            continue
        for p in procs:
            if p.pid in own_pids:
                continue
            used = getattr(p, "usedGpuMemory", None)
            mem = f" ({used / 2**20:.0f} MiB)" if isinstance(used, (int, float)) else ""
            found.append(f"{gpu.label}: pid {p.pid}{mem}")
    return found


def temperatures_c(nvidia: NvidiaGpus) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for gpu in nvidia.gpus:
        try:
            out[gpu.label] = nvidia.temperature_c(gpu)
        except Exception:
            out[gpu.label] = None
    return out
