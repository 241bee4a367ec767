"""GPU energy counters (NVML/AMDSMI) and CPU/DRAM RAPL through Zeus.

Zeus answers with empty dicts and 0 J when it finds no sensor; `ZeusMeter.probe` turns that
into "not available" so that no 0 J is ever recorded as a measurement."""

from __future__ import annotations

import logging
import os

from llm_energy.meters.base import Meter


def visible_gpu_indices() -> list[int] | None:
    """The GPUs this job was given, as indices into the visible set (None: unknown)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    ids = [v for v in visible.split(",") if v.strip() and v.strip() != "-1"]
    return list(range(len(ids)))


class ZeusMeter(Meter):
    # NVML's energy counter updates roughly every 10-100 ms depending on the GPU.
    update_period_s = 0.1

    def __init__(self, monitor: object, gpu_source: str, has_cpu: bool, has_dram: bool) -> None:
        super().__init__()
        self._monitor = monitor
        self._sources: dict[str, str] = {}
        if getattr(monitor, "gpu_indices", None):
            self._sources["gpu"] = gpu_source
        if has_cpu:
            self._sources["cpu"] = "rapl"
        if has_dram:
            self._sources["dram"] = "rapl"
        self._windows = 0

    @classmethod
    def probe(cls, device: str) -> ZeusMeter | None:
        """A meter over the sensors Zeus finds, or None where it finds none."""
        try:
            from zeus.monitor import ZeusMonitor
        except ImportError:
            return None
        logging.getLogger("zeus").setLevel(logging.ERROR)
        gpu_indices = (visible_gpu_indices() or [0]) if device == "cuda" else []
        try:
            monitor = ZeusMonitor(gpu_indices=gpu_indices, sync_execution_with="torch")
        except Exception:  # Zeus raises ValueError/NVML errors when a device is absent
            try:
                monitor = ZeusMonitor(gpu_indices=[], sync_execution_with="torch")
            except Exception:
                return None
        has_cpu = bool(getattr(monitor, "cpu_indices", None))
        has_dram = False
        if has_cpu:
            try:
                monitor.begin_window("__probe__", sync_execution=False)
                m = monitor.end_window("__probe__", sync_execution=False)
                has_dram = bool(getattr(m, "dram_energy", None))
            except Exception:
                has_cpu = False
        gpu_source = "amdsmi" if _is_amd(monitor) else "nvml-counter"
        meter = cls(monitor, gpu_source, has_cpu, has_dram)
        return meter if meter.sources else None

    @property
    def sources(self) -> dict[str, str]:
        return self._sources

    def read_j(self) -> dict[str, float]:  # pragma: no cover - windows are delegated to Zeus
        raise NotImplementedError("ZeusMeter measures through Zeus windows")

    def begin_window(self, name: str) -> None:
        self._monitor.begin_window(name, sync_execution=False)

    def end_window(self, name: str):  # type: ignore[override]
        from llm_energy.meters.base import DOMAINS, WindowEnergy

        m = self._monitor.end_window(name, sync_execution=False)
        energy: dict[str, float | None] = {d: None for d in DOMAINS}
        if "gpu" in self._sources:
            energy["gpu"] = float(sum(m.gpu_energy.values()))
        if "cpu" in self._sources and m.cpu_energy:
            energy["cpu"] = float(sum(m.cpu_energy.values()))
        if "dram" in self._sources and m.dram_energy:
            energy["dram"] = float(sum(m.dram_energy.values()))
        warnings = []
        if self.update_period_s and m.time < 10 * self.update_period_s:
            warnings.append(f"window '{name}' ({m.time:.3f} s) is shorter than 10x the sensor "
                            f"update period ({self.update_period_s:.3f} s)")
        return WindowEnergy(float(m.time), energy, dict(self._sources), warnings)


def _is_amd(monitor: object) -> bool:
    gpus = getattr(monitor, "gpus", None)
    return type(gpus).__name__.lower().startswith("amd")
