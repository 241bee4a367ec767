"""CPU energy modelled from utilisation: the cell's own busy core-seconds × a configured
per-core power.

Not a measurement: every number it produces is labelled `estimate` and the run carries a
warning. It exists so that machines without sensors (CI, VMs) still get comparable figures.
It charges the measuring process and its descendants (`proctree.ProcessTreeCpu`: a vLLM
engine core or an API server started by the backend included), never other processes on the
machine, so idle baselines and net energy compare across cells of a busy machine; what the
others used is reported by the contention check instead."""

from __future__ import annotations

import psutil

from llm_energy.telemetry.meters.base import Meter
from llm_energy.telemetry.proctree import ProcessTreeCpu

ESTIMATE_WARNING = (
    "energy is estimated (no sensor): busy CPU core-seconds of the cell's own processes x "
    "{w} W per core; compare cells only relative to each other"
)


# Busy time is the sum of the busy fields, never `total - idle`: that difference cancels two
# ~1e6 s floats and can step backwards by 1e-12 s when only idle advances, which the meter
# would report as a counter going backwards. On Linux, guest time is already inside `user`.
BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq", "steal")


def busy_core_seconds(cpu_times: object | None = None) -> float:
    times = psutil.cpu_times() if cpu_times is None else cpu_times
    return float(sum(getattr(times, field, 0.0) for field in BUSY_FIELDS))


def cpu_cores() -> int:
    """Logical CPUs of the machine: the estimate's ceiling is this × the per-core power."""
    return psutil.cpu_count() or 1


class EstimateMeter(Meter):
    # Process CPU times advance in clock ticks (10 ms).
    update_period_s = 0.01
    # Reads remember descendants that end between window edges (see proctree).
    poll_interval_s = 0.5

    def __init__(self, cpu_power_per_core_w: float, tree: ProcessTreeCpu | None = None) -> None:
        super().__init__()
        self.cpu_power_per_core_w = cpu_power_per_core_w
        #: The process tree charged: by default this process and its descendants.
        self.tree = tree if tree is not None else ProcessTreeCpu()

    @property
    def sources(self) -> dict[str, str]:
        return {"cpu": "estimate"}

    @property
    def ceiling_w(self) -> float:
        """The model's physical limit: every core busy."""
        return cpu_cores() * self.cpu_power_per_core_w

    def read_j(self) -> dict[str, float]:
        # Window edges rescan the tree, so a process started just before an edge is charged
        # to the window it ran in.
        return {"cpu": self.tree.read_s(rescan=True) * self.cpu_power_per_core_w}

    def _poll(self) -> None:
        self.tree.read_s()

    @property
    def warning(self) -> str:
        return ESTIMATE_WARNING.format(w=self.cpu_power_per_core_w)

    @property
    def static_warnings(self) -> list[str]:
        return [self.warning]
