"""Energy meters behind one interface, chosen by what the machine has.

Per domain, the best source found wins:

    gpu:       nvml-counter > amdsmi > nvml-power   (NVIDIA ones read through Zeus's
               device layer, `telemetry/nvidia.py`)
    cpu, dram: rapl
    fallback:  estimate (CPU busy time × per-core power) when no sensor at all is found

`measurement.energy_source` names a source that must be used for its domain (an absent one
is an error, never a silent fallback); the other domains are still detected. `estimate`
forces the CPU model alone.

On a `cuda` device a GPU meter is required: without one `detect` raises (the cell fails with
the reason) unless `estimate` was asked for; a `CUDA_VISIBLE_DEVICES` entry that names no
device, or several, raises `GpuIdError` whatever the source (`gpu_ids.py`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llm_energy.telemetry.meters.base import (
    DOMAINS,
    CompositeMeter,
    CounterTrack,
    Meter,
    WindowEnergy,
)
from llm_energy.telemetry.meters.estimate import EstimateMeter
from llm_energy.telemetry.meters.nvml import (
    Gpu,
    GpuIdError,
    NoGpus,
    NvmlCounterMeter,
    NvmlPowerMeter,
    job_gpus,
    load_nvml,
    parse_visible_devices,
)
from llm_energy.telemetry.meters.rapl import POWERCAP_ROOT, RaplMeter, RaplUnavailable
from llm_energy.telemetry.meters.zeus_meter import ZeusMeter

if TYPE_CHECKING:
    from llm_energy.telemetry.nvidia import NvidiaGpus, Opener

GPU_SOURCES = ("nvml-counter", "amdsmi", "nvml-power")


@dataclass
class Detection:
    meter: Meter
    nvidia: NvidiaGpus | None = None    # the job's NVIDIA GPUs through Zeus, if it has any
    gpus: list[Gpu] = field(default_factory=list)   # one per physical GPU metered
    warnings: list[str] = field(default_factory=list)  # hold for every run of the cell
    notes: list[str] = field(default_factory=list)     # why a source was not used


def detect(device: str, energy_source: str, cpu_power_per_core_w: float, *,
           sample_period_s: float = 0.1, gpus_per_cell: int = 1, nvml: Any = None,
           zeus: Opener | None = None, powercap_root: str | os.PathLike = POWERCAP_ROOT,
           environ: dict[str, str] | None = None) -> Detection:
    """`nvml`: the module for the getters Zeus lacks (pynvml by default); `zeus`: opens Zeus's
    GPU manager over NVML indices (`nvidia.open_zeus` by default). Both are for tests."""
    notes: list[str] = []
    warnings: list[str] = []
    gpus: list[Gpu] = []
    nvidia: NvidiaGpus | None = None
    gpu_meter: Meter | None = None
    gpu_ids: list[str] = []
    if device == "cuda":
        visible = parse_visible_devices(environ, gpus_per_cell)
        gpu_ids = visible.ids
        warnings.extend(visible.warnings)
        try:
            nvml = nvml if nvml is not None else load_nvml()
        except NoGpus as exc:
            notes.append(f"NVIDIA GPUs: {exc}")
            nvml = None
        if nvml is not None:
            try:
                # GpuIdError (an entry naming no device, or several) propagates: the cell
                # fails with the entry named rather than metering other GPUs.
                entries = job_gpus(nvml, gpu_ids, visible.source or "CUDA_VISIBLE_DEVICES")
            except NoGpus as exc:
                notes.append(f"NVIDIA GPUs: {exc}")
                entries = []
            if entries:
                from llm_energy.telemetry.nvidia import mig_warning, open_job

                try:
                    nvidia = open_job(nvml, entries, zeus)
                    gpus = nvidia.gpus
                    warnings.extend(w for w in [mig_warning(entries, gpus)] if w)
                except GpuIdError:
                    raise
                except Exception as exc:  # ZeusGPUInitError: NVML, or zeusd unreachable
                    via = (f"zeusd at ZEUSD_SOCK_PATH={os.environ['ZEUSD_SOCK_PATH']}"
                           if os.environ.get("ZEUSD_SOCK_PATH") else "NVML")
                    notes.append(f"NVIDIA GPUs: Zeus cannot open them ({via}): "
                                 f"{type(exc).__name__}: {exc}")
    # A GPU source named: only that one; otherwise (auto, rapl) the best GPU source found.
    gpu_choice = energy_source if energy_source in GPU_SOURCES else "auto"
    if device == "cuda" and energy_source != "estimate":
        if nvidia is not None and gpu_choice in ("auto", "nvml-counter"):
            if nvidia.supports_energy_counter():
                gpu_meter = NvmlCounterMeter(nvidia)
            else:
                notes.append("nvml-counter: the GPU has no total-energy counter (pre-Volta), "
                             "or its first read through Zeus failed")
        if gpu_meter is None and not gpus and gpu_choice in ("auto", "amdsmi"):
            indices = [int(i) for i in gpu_ids if i.isdigit()] or [0]
            gpu_meter = ZeusMeter.probe(device, indices)
            if gpu_meter is None:
                notes.append("amdsmi: no AMD GPU found through Zeus")
        if gpu_meter is None and gpus and gpu_choice in ("auto", "nvml-power"):
            gpu_meter = NvmlPowerMeter(gpus, sample_period_s)
    rapl: Meter | None = None
    if energy_source != "estimate":
        try:
            rapl = RaplMeter.probe(powercap_root)
        except RaplUnavailable as exc:
            notes.append(f"rapl: {exc}")
    if energy_source == "estimate":
        meter: Meter = EstimateMeter(cpu_power_per_core_w)
    else:
        parts = [m for m in (gpu_meter, rapl) if m is not None]
        found = {s for m in parts for s in m.sources.values()}
        if energy_source != "auto" and energy_source not in found:
            raise RuntimeError(
                f"measurement.energy_source={energy_source!r} was requested but is not "
                f"available on this machine (found: {', '.join(sorted(found)) or 'none'}; "
                f"{'; '.join(notes) or 'no reason given'}); use 'auto' or 'estimate'")
        if not parts:
            meter = EstimateMeter(cpu_power_per_core_w)
        elif len(parts) == 1:
            meter = parts[0]
        else:
            meter = CompositeMeter(parts)
        if gpu_meter is not None and rapl is None:
            warnings.append("CPU and DRAM energy not measured (no readable RAPL): "
                            "total_energy_j is GPU energy only")
        if device == "cuda" and gpu_meter is None:
            raise RuntimeError(
                "measurement.device is 'cuda' but no GPU energy meter is available "
                f"({'; '.join(n for n in notes if not n.startswith('rapl')) or 'no reason given'})"
                ": refusing to report CPU energy as the cell's energy. Fix the GPU access, or "
                "set measurement.energy_source: estimate to measure this study with the CPU "
                "estimate only")
    return Detection(meter, nvidia, gpus, warnings, notes)


def detect_meter(device: str, energy_source: str, cpu_power_per_core_w: float,
                 **kwargs: Any) -> Meter:
    """The best meter available (see `detect`)."""
    return detect(device, energy_source, cpu_power_per_core_w, **kwargs).meter


__all__ = [
    "DOMAINS",
    "CompositeMeter",
    "CounterTrack",
    "Detection",
    "EstimateMeter",
    "GpuIdError",
    "Meter",
    "NvmlCounterMeter",
    "NvmlPowerMeter",
    "RaplMeter",
    "WindowEnergy",
    "ZeusMeter",
    "detect",
    "detect_meter",
]
