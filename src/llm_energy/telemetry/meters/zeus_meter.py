"""AMD GPU energy (amdsmi) through Zeus.

NVIDIA GPUs are read through Zeus's device layer by `nvml.py` (`telemetry/nvidia.py`), with our
own counter checks on top, and CPU/DRAM with powercap (`rapl.py`), so this monitor is asked for
AMD GPUs only (`cpu_indices=[]`). Zeus answers with empty dicts
and 0 J when it finds no sensor; `ZeusMeter.probe` turns that into "not available" so that no
0 J is ever recorded as a measurement."""

from __future__ import annotations

import logging
from typing import Any

from llm_energy.telemetry.meters.base import DOMAINS, Meter, WindowEnergy


class ZeusMeter(Meter):
    # amdsmi's energy accumulator updates about every 1 ms, but reads are ~10 ms apart in
    # practice; 0.1 s keeps the short-window flag conservative.
    update_period_s = 0.1

    def __init__(self, monitor: Any, gpu_source: str = "amdsmi") -> None:
        super().__init__()
        self._monitor = monitor
        self._sources = {"gpu": gpu_source} if getattr(monitor, "gpu_indices", None) else {}

    @classmethod
    def probe(cls, device: str, gpu_indices: list[int] | None = None) -> ZeusMeter | None:
        """A meter over the AMD GPUs Zeus finds among `gpu_indices`, or None."""
        if device != "cuda":
            return None
        try:
            from zeus.monitor import ZeusMonitor
        except ImportError:
            return None
        logging.getLogger("zeus").setLevel(logging.ERROR)
        try:
            monitor = ZeusMonitor(gpu_indices=gpu_indices or [0], cpu_indices=[],
                                  sync_execution_with="torch")
        except Exception:  # Zeus raises ValueError/SMI errors when a device is absent
            return None
        if not _is_amd(monitor):
            return None
        meter = cls(monitor)
        return meter if meter.sources else None

    @property
    def sources(self) -> dict[str, str]:
        return self._sources

    def begin_window(self, name: str) -> None:
        self._monitor.begin_window(name, sync_execution=False)

    def end_window(self, name: str) -> WindowEnergy:
        try:
            m = self._monitor.end_window(name, sync_execution=False)
        except Exception as exc:  # an SMI error mid-run is a flag
            return WindowEnergy(0.0, {d: None for d in DOMAINS}, dict(self._sources),
                                [f"window '{name}': amdsmi read failed ({exc}); gpu energy "
                                 "not reported"])
        energy: dict[str, float | None] = {d: None for d in DOMAINS}
        warnings = []
        gpu_j = float(sum(m.gpu_energy.values())) if m.gpu_energy else None
        if gpu_j is None or gpu_j < 0:
            warnings.append(f"window '{name}': amdsmi gave no or negative energy; gpu energy "
                            "not reported")
        elif gpu_j == 0 and m.time >= 10 * self.update_period_s:
            warnings.append(f"window '{name}': the gpu energy counter did not advance "
                            f"(stalled sensor); gpu energy not reported")
        else:
            energy["gpu"] = gpu_j
        if m.time < 10 * self.update_period_s:
            warnings.append(f"window '{name}' ({m.time:.3f} s) is shorter than 10x the sensor "
                            f"update period ({self.update_period_s:.3f} s)")
        return WindowEnergy(float(m.time), energy, dict(self._sources), warnings)


def _is_amd(monitor: object) -> bool:
    gpus = getattr(monitor, "gpus", None)
    return type(gpus).__name__.lower().startswith("amd")
