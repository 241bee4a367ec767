"""Energy meters behind one interface, chosen by what the machine has.

Per domain, the best source found wins:

    gpu:       nvml-counter > amdsmi > nvml-power
    cpu, dram: rapl
    fallback:  estimate (CPU busy time × per-core power) when no sensor at all is found

`measurement.energy_source` names a source that must be used for its domain (an absent one
is an error, never a silent fallback); the other domains are still detected. `estimate`
forces the CPU model alone."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

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
    NvmlCounterMeter,
    NvmlPowerMeter,
    job_gpus,
    load_nvml,
    supports_energy_counter,
    visible_gpu_ids,
)
from llm_energy.telemetry.meters.rapl import POWERCAP_ROOT, RaplMeter, RaplUnavailable
from llm_energy.telemetry.meters.zeus_meter import ZeusMeter

GPU_SOURCES = ("nvml-counter", "amdsmi", "nvml-power")


@dataclass
class Detection:
    meter: Meter
    nvml: Any = None                    # the pynvml module when the job has NVIDIA GPUs
    gpus: list[Gpu] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # hold for every run of the cell
    notes: list[str] = field(default_factory=list)     # why a source was not used


def detect(device: str, energy_source: str, cpu_power_per_core_w: float, *,
           sample_period_s: float = 0.1, gpus_per_cell: int = 1, nvml: Any = None,
           powercap_root: str | os.PathLike = POWERCAP_ROOT,
           environ: dict[str, str] | None = None) -> Detection:
    notes: list[str] = []
    warnings: list[str] = []
    gpus: list[Gpu] = []
    gpu_meter: Meter | None = None
    gpu_ids: list[str] = []
    if device == "cuda":
        gpu_ids, guessed = visible_gpu_ids(environ, gpus_per_cell)
        if guessed:
            warnings.append(guessed)
        try:
            nvml = nvml if nvml is not None else load_nvml()
            gpus = job_gpus(nvml, gpu_ids)
        except Exception as exc:  # NoGpus, NVMLError_NotFound ...
            notes.append(f"NVIDIA GPUs: {exc}")
            nvml = None
    if device == "cuda" and energy_source in ("auto", *GPU_SOURCES):
        if gpus and energy_source in ("auto", "nvml-counter"):
            if supports_energy_counter(nvml, gpus):
                gpu_meter = NvmlCounterMeter(nvml, gpus)
            else:
                notes.append("nvml-counter: the GPU has no total-energy counter (pre-Volta "
                             "or MIG)")
        if gpu_meter is None and not gpus and energy_source in ("auto", "amdsmi"):
            indices = [int(i) for i in gpu_ids if i.isdigit()] or [0]
            gpu_meter = ZeusMeter.probe(device, indices)
            if gpu_meter is None:
                notes.append("amdsmi: no AMD GPU found through Zeus")
        if gpu_meter is None and gpus and energy_source in ("auto", "nvml-power"):
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
        if device == "cuda" and gpu_meter is None and parts:
            warnings.append("GPU energy not measured (no NVML/amdsmi sensor found): "
                            "total_energy_j is CPU/DRAM energy only")
    return Detection(meter, nvml, gpus, warnings, notes)


def detect_meter(device: str, energy_source: str, cpu_power_per_core_w: float,
                 **kwargs: Any) -> Meter:
    """The best meter available (see `detect`)."""
    return detect(device, energy_source, cpu_power_per_core_w, **kwargs).meter


__all__ = ["DOMAINS", "Meter", "WindowEnergy", "CompositeMeter", "CounterTrack", "Detection",
           "EstimateMeter", "NvmlCounterMeter", "NvmlPowerMeter", "RaplMeter", "ZeusMeter",
           "detect", "detect_meter"]
