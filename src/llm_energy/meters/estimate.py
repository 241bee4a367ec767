"""CPU energy modelled from utilisation: busy core-seconds × a configured per-core power.

Not a measurement: every number it produces is labelled `estimate` and the run carries a
warning. It exists so that machines without sensors (CI, VMs) still get comparable figures."""

from __future__ import annotations

import psutil

from llm_energy.meters.base import Meter

ESTIMATE_WARNING = (
    "energy is estimated (no sensor): busy CPU core-seconds x {w} W per core; "
    "compare cells only relative to each other"
)


def busy_core_seconds() -> float:
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    return sum(times) - idle - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)


class EstimateMeter(Meter):
    # /proc/stat advances in clock ticks (10 ms).
    update_period_s = 0.01

    def __init__(self, cpu_power_per_core_w: float) -> None:
        super().__init__()
        self.cpu_power_per_core_w = cpu_power_per_core_w

    @property
    def sources(self) -> dict[str, str]:
        return {"cpu": "estimate"}

    def read_j(self) -> dict[str, float]:
        return {"cpu": busy_core_seconds() * self.cpu_power_per_core_w}

    @property
    def warning(self) -> str:
        return ESTIMATE_WARNING.format(w=self.cpu_power_per_core_w)

    @property
    def static_warnings(self) -> list[str]:
        return [self.warning]
