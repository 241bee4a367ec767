"""Energy meters behind one interface, chosen by what the machine has."""

from __future__ import annotations

from llm_energy.meters.base import DOMAINS, Meter, WindowEnergy
from llm_energy.meters.estimate import EstimateMeter
from llm_energy.meters.zeus_meter import ZeusMeter


def detect_meter(device: str, energy_source: str, cpu_power_per_core_w: float) -> Meter:
    """The best meter available: Zeus' sensors when it finds any, else the CPU estimate.

    An explicitly requested source that is absent is an error, not a silent fallback."""
    if energy_source == "estimate":
        return EstimateMeter(cpu_power_per_core_w)
    zeus = ZeusMeter.probe(device)
    if energy_source == "auto":
        return zeus if zeus is not None else EstimateMeter(cpu_power_per_core_w)
    if zeus is None or energy_source not in zeus.sources.values():
        found = ", ".join(sorted(set(zeus.sources.values()))) if zeus else "none"
        raise RuntimeError(
            f"measurement.energy_source={energy_source!r} was requested but is not available "
            f"on this machine (found: {found}); use 'auto' or 'estimate'"
        )
    return zeus


__all__ = ["DOMAINS", "Meter", "WindowEnergy", "EstimateMeter", "ZeusMeter", "detect_meter"]
