"""The job's NVIDIA GPUs through Zeus's device layer: one hardware layer for metering
(energy counter, power, temperature), the sampler, preflight checks, provenance and the
power/clock axes (`gpu_control.py`), all on the same Zeus GPU objects.

Zeus 0.16 (`zeus.device.gpu.nvidia.NVIDIAGPUs`) picks its GPUs from `CUDA_VISIBLE_DEVICES`,
which it parses with `int()`: a UUID, a UUID prefix or a MIG id raises. So the variable is
first mapped to NVML indices by CUDA's rules (`meters/gpu_ids.py`), and Zeus's manager is
built with the variable set to those indices for the duration of its constructor (what Zeus's
own MIG error message advises), then restored. The manager is built directly
(`NVIDIAGPUs()`) rather than with `zeus.device.get_gpus()`, whose process-wide singleton would
keep whatever indices the first caller had set.

A MIG instance has no energy counter or power reading of its own in NVML: it is metered as
its whole GPU (the parent's index goes to Zeus), `NvidiaGpus.mig` says so and the cell's rows
carry `gpu_mig_whole_gpu` and a warning. Two MIG slices of one GPU are one metered GPU.

What Zeus lacks (UUIDs, current clocks, throttle reasons, utilisation, memory, processes) is
read by `nvml_getters.py` on the handle of Zeus's GPU object."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llm_energy.telemetry import nvml_getters as ng
from llm_energy.telemetry.meters.gpu_ids import Gpu, GpuIdError

_ENV_LOCK = threading.Lock()
_MANAGERS: dict[tuple[int, ...], Any] = {}

Opener = Callable[[Sequence[int]], Any]


def open_zeus(indices: Sequence[int]) -> Any:
    """Zeus's NVIDIA GPU manager over these NVML indices, in this order (one per process and
    index list). Zeus raises ZeusGPUInitError when NVML or zeusd (ZEUSD_SOCK_PATH) fails."""
    key = tuple(int(i) for i in indices)
    if key in _MANAGERS:
        return _MANAGERS[key]
    from zeus.device.gpu.nvidia import NVIDIAGPUs

    with _ENV_LOCK:
        before = os.environ.get("CUDA_VISIBLE_DEVICES")
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in key)
        try:
            manager = NVIDIAGPUs()
        finally:
            if before is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = before
    _MANAGERS[key] = manager
    return manager


def zeus_indices(entries: Sequence[Gpu]) -> list[int]:
    """The NVML indices to give Zeus for the job's entries: each physical GPU once, in CUDA
    order (a MIG entry gives its parent GPU's index)."""
    missing = [g.ident for g in entries if g.nvml_index is None]
    if missing:
        raise GpuIdError(f"cannot tell the NVML index of {', '.join(missing)}, so Zeus cannot "
                         "be given it")
    return list(dict.fromkeys(int(g.nvml_index) for g in entries))  # type: ignore[arg-type]


@dataclass
class NvidiaGpus:
    """Zeus's manager over the job's GPUs and the module for the getters Zeus lacks.

    `gpus`: one per physical GPU, in CUDA order, labelled by its first CUDA entry, `handle`
    being Zeus's GPU object's and `zeus_index` its position in the manager."""

    zeus: Any
    nvml: Any
    gpus: list[Gpu] = field(default_factory=list)
    #: Getters where Zeus failed once (a driver without the call) and the fallback answered.
    fallbacks: set[str] = field(default_factory=set)

    @property
    def mig(self) -> bool:
        return any(g.mig for g in self.gpus)

    # ------------------------------------------------------------ through Zeus
    def energy_mj(self, gpu: Gpu) -> float:
        return float(self.zeus.get_total_energy_consumption(gpu.zeus_index))

    def supports_energy_counter(self) -> bool:
        """Every GPU has the total-energy counter (Volta+) and a first read succeeds."""
        try:
            for gpu in self.gpus:
                if not self.zeus.supports_get_total_energy_consumption(gpu.zeus_index):
                    return False
                self.energy_mj(gpu)
            return True
        except Exception:
            return False

    def power_w(self, gpu: Gpu) -> float:
        """Instantaneous board power (Zeus, NVML field values); `nvmlDeviceGetPowerUsage` on
        drivers without the field."""
        return self._zeus_or("power", lambda: self.zeus.get_instant_power_usage(
            gpu.zeus_index) / 1000.0, lambda: ng.power_usage_mw(self.nvml, gpu.handle) / 1000.0)

    def temperature_c(self, gpu: Gpu) -> float:
        return self._zeus_or("temperature", lambda: float(self.zeus.get_gpu_temperature(
            gpu.zeus_index)), lambda: ng.temperature_c(self.nvml, gpu.handle))

    def _zeus_or(self, what: str, zeus: Callable[[], float], fallback: Callable[[], float]) -> float:
        if what not in self.fallbacks:
            try:
                return zeus()
            except Exception:
                value = fallback()  # raises when the GPU cannot answer at all
                self.fallbacks.add(what)
                return value
        return fallback()

    def power_limit_w(self, gpu: Gpu) -> float:
        return self.zeus.get_power_management_limit(gpu.zeus_index) / 1000.0

    def name(self, gpu: Gpu) -> str:
        return str(self.zeus.get_name(gpu.zeus_index))

    # ------------------------------------------------------------ what Zeus lacks
    def clock_mhz(self, gpu: Gpu, which: str) -> float:
        return ng.clock_mhz(self.nvml, gpu.handle, which)

    def clock_event_bits(self, gpu: Gpu) -> int | None:
        return ng.clock_event_bits(self.nvml, gpu.handle)

    def utilization_pct(self, gpu: Gpu) -> float:
        return ng.utilization_pct(self.nvml, gpu.handle)

    def memory_used_mb(self, gpu: Gpu) -> float:
        return ng.memory_used_mb(self.nvml, gpu.handle)

    def processes(self, gpu: Gpu) -> list[Any]:
        return ng.compute_processes(self.nvml, gpu.handle)


def open_job(nvml: Any, entries: Sequence[Gpu], opener: Opener | None = None) -> NvidiaGpus:
    """Zeus's GPU objects for the job's CUDA entries (`meters.gpu_ids.job_gpus`): the NVML
    indices go to Zeus (`opener`, `open_zeus` by default), one metered GPU per physical GPU."""
    order = zeus_indices(entries)
    zeus = (opener or open_zeus)(order)
    objects = list(zeus.gpus)
    if len(objects) != len(order):
        raise GpuIdError(f"Zeus opened {len(objects)} GPU(s) for NVML indices {order}")
    metered = []
    for position, index in enumerate(order):
        mine = [g for g in entries if g.nvml_index == index]
        handle = objects[position].handle
        ident = mine[0].ident
        if mine[0].mig:  # the parent GPU is what is metered, locked and cached
            try:
                ident = ng.uuid(nvml, handle)
            except Exception:
                ident = f"nvml{index}"
        metered.append(Gpu(mine[0].label, handle, ident, index,
                           mig=any(g.mig for g in mine), zeus_index=position))
    return NvidiaGpus(zeus, nvml, metered)


def mig_warning(entries: Sequence[Gpu], metered: Sequence[Gpu]) -> str | None:
    """The flag line when a CUDA entry is a MIG slice (None otherwise)."""
    slices = [g.ident for g in entries if g.mig]
    if not slices:
        return None
    whole = [f"{g.label} ({g.ident})" for g in metered if g.mig]
    return (f"MIG: {', '.join(slices)} metered as the whole GPU ({', '.join(whole)}): NVML has "
            "no per-slice energy or power, so energy, power and clocks include every other "
            "slice's work on that GPU (gpu_mig_whole_gpu)")


def zeusd_index_mismatch(nvml: Any = None, client: Any = None) -> str | None:
    """With zeusd in use (ZEUSD_SOCK_PATH / ZEUSD_HOST_PORT): why its GPU indices may not be
    the job's, or None. Zeus sends zeusd the job's NVML index; zeusd runs outside the job and
    indexes every GPU of the node. Where the job sees fewer GPUs than zeusd (Slurm with
    `ConstrainDevices`, a container given some GPUs), the job's GPU 0 need not be zeusd's GPU
    0, and a setter could change another job's GPU. zeusd reports indices and names but no
    UUIDs, so the two views can only be compared by their index lists."""
    from zeus.utils.zeusd import ZeusdClient, ZeusdConfig

    config = ZeusdConfig.from_env() if client is None else None
    if client is None and config is None:
        return None
    client = client or ZeusdClient(config)
    local = ng.device_count(nvml or ng.load_nvml())
    theirs = sorted(int(i) for i in client.gpu_ids)
    if theirs == list(range(local)):
        return None
    return (f"zeusd at {client.endpoint} manages GPU indices {theirs} but this job's NVML sees "
            f"{local} GPU(s) (indices 0-{local - 1}): the job sees a subset of the node's GPUs "
            "(device cgroups or a container), so an index zeusd is sent may name another job's "
            "GPU. Run GPU power/clock axes with the whole node allocated (docs/zeusd.md)")
