"""CPU energy modelled from utilisation: busy core-seconds × a configured per-core power.

Not a measurement: every number it produces is labelled `estimate` and the run carries a
warning. It exists so that machines without sensors (CI, VMs) still get comparable figures."""

from __future__ import annotations

import psutil

from llm_energy.telemetry.meters.base import Meter

ESTIMATE_WARNING = (
    "energy is estimated (no sensor): busy CPU core-seconds x {w} W per core; "
    "compare cells only relative to each other"
)


# Busy time is the sum of the busy fields, never `total - idle`: that difference cancels two
# ~1e6 s floats and can step backwards by 1e-12 s when only idle advances, which the meter
# would report as a counter going backwards. On Linux, guest time is already inside `user`.
BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq", "steal")


def busy_core_seconds(cpu_times: object | None = None) -> float:
    times = psutil.cpu_times() if cpu_times is None else cpu_times
    return float(sum(getattr(times, field, 0.0) for field in BUSY_FIELDS))


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
