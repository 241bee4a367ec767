"""The meter interface: energy over named windows, per domain, each with its source."""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field

DOMAINS = ("gpu", "cpu", "dram")


@dataclass
class WindowEnergy:
    """Energy of one window. A domain the meter cannot see is absent (None), never 0 J."""

    duration_s: float
    energy_j: dict[str, float | None]
    source: dict[str, str]
    warnings: list[str] = field(default_factory=list)

    @property
    def total_energy_j(self) -> float | None:
        values = [v for v in self.energy_j.values() if v is not None]
        return sum(values) if values else None

    @property
    def energy_source(self) -> str:
        """All sources used, e.g. 'nvml-counter+rapl'."""
        return "+".join(sorted(set(self.source.values()))) or "none"


class Meter(abc.ABC):
    """Begin/end named windows; windows may nest or overlap."""

    #: the update period of the underlying sensor; windows shorter than 10× are flagged.
    update_period_s: float = 0.0

    def __init__(self) -> None:
        self._open: dict[str, tuple[float, dict[str, float]]] = {}

    @property
    @abc.abstractmethod
    def sources(self) -> dict[str, str]:
        """domain -> source name for every domain this meter measures."""

    @abc.abstractmethod
    def read_j(self) -> dict[str, float]:
        """Cumulative energy per domain in joules since an arbitrary origin."""

    def begin_window(self, name: str) -> None:
        self._open[name] = (time.perf_counter(), self.read_j())

    def end_window(self, name: str) -> WindowEnergy:
        start_s, start_j = self._open.pop(name)
        end_j = self.read_j()
        duration_s = time.perf_counter() - start_s
        warnings: list[str] = []
        energy: dict[str, float | None] = {}
        for domain in DOMAINS:
            if domain not in self.sources:
                energy[domain] = None
                continue
            delta = end_j[domain] - start_j[domain]
            if delta < 0:
                warnings.append(f"{domain} energy counter went backwards in window '{name}'")
                energy[domain] = None
            else:
                energy[domain] = delta
        if self.update_period_s and duration_s < 10 * self.update_period_s:
            warnings.append(
                f"window '{name}' ({duration_s:.3f} s) is shorter than 10x the sensor update "
                f"period ({self.update_period_s:.3f} s)"
            )
        return WindowEnergy(duration_s, energy, dict(self.sources), warnings)

    def close(self) -> None:
        pass
