"""CPU package and DRAM energy from the Linux powercap interface (RAPL).

    /sys/class/powercap/intel-rapl:<socket>/           name = package-<socket>
    /sys/class/powercap/intel-rapl:<socket>:<n>/       name = core | uncore | dram
    .../energy_uj, .../max_energy_range_uj

AMD Zen CPUs appear under the same `intel-rapl` names. `cpu` = sum of the `package-*`
zones, `dram` = sum of the `dram` zones (top-level or sub-zone); `core`/`uncore` are inside
the package and `psys` covers the whole platform, so they are not added. Counters wrap at
`max_energy_range_uj` (~262 kJ: minutes at full load), so the sampler polls them every tick.

Since 2020 most kernels make `energy_uj` readable by root only; an unreadable tree is
reported as unavailable with the fix, not as 0 J."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llm_energy.telemetry.meters.base import CounterTrack, Meter

POWERCAP_ROOT = Path("/sys/class/powercap")
#: A wrap implying more than this (per zone, since the previous read) is a glitch, not a wrap.
MAX_ZONE_POWER_W = 5000.0


@dataclass
class Zone:
    path: Path
    name: str
    domain: str          # cpu | dram
    max_range_j: float


class RaplUnavailable(RuntimeError):
    pass


def discover(root: str | os.PathLike = POWERCAP_ROOT) -> list[Zone]:
    """Readable package and DRAM zones under `root`, or RaplUnavailable saying why."""
    root = Path(root)
    zones: list[Zone] = []
    unreadable: list[str] = []
    for path in sorted(root.glob("intel-rapl:*")):
        try:
            name = (path / "name").read_text().strip()
        except OSError:
            continue
        if name.startswith("package"):
            domain = "cpu"
        elif name == "dram":
            domain = "dram"
        else:
            continue
        try:
            int((path / "energy_uj").read_text())
            max_range_j = int((path / "max_energy_range_uj").read_text()) / 1e6
        except PermissionError:
            unreadable.append(str(path / "energy_uj"))
            continue
        except (OSError, ValueError):
            continue
        zones.append(Zone(path, name, domain, max_range_j))
    if not zones:
        if unreadable:
            raise RaplUnavailable(
                f"RAPL energy counters are not readable ({unreadable[0]} needs root): "
                "ask an administrator for read access (e.g. `chmod o+r` on energy_uj at boot)")
        raise RaplUnavailable(f"no RAPL package/dram zones under {root}")
    if not any(z.domain == "cpu" for z in zones):
        raise RaplUnavailable(f"no RAPL package zone under {root}")
    return zones


class RaplMeter(Meter):
    # RAPL counters update every ~1 ms; the sysfs read itself is the limit.
    update_period_s = 0.001
    detects_stall = True
    # A zone wraps after ~262 kJ (minutes at full load); a sysfs read costs microseconds.
    poll_interval_s = 1.0

    def __init__(self, zones: list[Zone], clock: Callable[[], float] | None = None) -> None:
        super().__init__(*(c for c in (clock,) if c is not None))
        self.zones = zones
        logs: dict[str, list[str]] = {}
        self._tracks = {
            str(z.path): CounterTrack(f"RAPL {z.name}", wrap_j=z.max_range_j,
                                      max_power_w=MAX_ZONE_POWER_W,
                                      fault_log=logs.setdefault(z.domain, []))
            for z in zones
        }
        self._domain_track = {z.domain: self._tracks[str(z.path)] for z in zones}

    @classmethod
    def probe(cls, root: str | os.PathLike = POWERCAP_ROOT) -> RaplMeter:
        return cls(discover(root))

    @property
    def sources(self) -> dict[str, str]:
        return {z.domain: "rapl" for z in self.zones}

    def tracks(self) -> dict[str, CounterTrack]:
        return dict(self._domain_track)

    def read_j(self) -> dict[str, float]:
        now = self.clock()
        totals: dict[str, float] = {}
        for zone in self.zones:
            raw_j = int((zone.path / "energy_uj").read_text()) / 1e6
            total = self._tracks[str(zone.path)].update(raw_j, now)
            totals[zone.domain] = totals.get(zone.domain, 0.0) + total
        return totals

    def _poll(self) -> None:
        self.read_j()

    @property
    def static_warnings(self) -> list[str]:
        allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        total = os.cpu_count()
        if allowed is not None and total and allowed < total:
            return [f"rapl measures whole CPU packages: this job may use {allowed} of {total} "
                    "cores, so other work on the node is included in cpu/dram energy"]
        return []
