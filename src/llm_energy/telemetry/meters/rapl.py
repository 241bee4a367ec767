"""CPU package and DRAM energy from the Linux powercap interface (RAPL).

    /sys/class/powercap/intel-rapl:<socket>/           name = package-<socket>
    /sys/class/powercap/intel-rapl:<socket>:<n>/       name = core | uncore | dram
    .../energy_uj, .../max_energy_range_uj

AMD Zen CPUs appear under the same `intel-rapl` names. `cpu` = sum of the `package-*`
zones, `dram` = sum of the `dram` zones (top-level or sub-zone); `core`/`uncore` are inside
the package and `psys` covers the whole platform, so they are not added. Counters wrap at
`max_energy_range_uj` (~262 kJ: minutes at full load), so the sampler polls them every tick.

Since 2020 most kernels make `energy_uj` readable by root only; an unreadable tree is
reported as unavailable with the fix, not as 0 J. Every such message names the file that is
missing or unreadable."""

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


def _read_uj(path: Path) -> tuple[int | None, str | None]:
    """(the file's integer, None) or (None, what is wrong with the file, naming it)."""
    try:
        return int(path.read_text()), None
    except FileNotFoundError:
        return None, f"{path} is missing"
    except PermissionError:
        return None, (f"{path} is not readable by this user (most kernels since 2020 make it "
                      f"root-only): ask an administrator for read access, e.g. "
                      f"`chmod o+r {path}` at boot")
    except OSError as exc:
        return None, f"{path} cannot be read ({exc.strerror or exc})"
    except ValueError:
        return None, f"{path} does not hold an integer"


def discover(root: str | os.PathLike = POWERCAP_ROOT,
             problems: list[str] | None = None) -> list[Zone]:
    """Readable package and DRAM zones under `root`, or RaplUnavailable saying why, naming
    the file that is missing or unreadable. Zones left out because one of their files failed
    are appended to `problems` (when given), also when other zones were found."""
    root = Path(root)
    zones: list[Zone] = []
    failed: list[str] = []
    names: list[str] = []
    candidates = sorted(root.glob("intel-rapl:*"))
    for path in candidates:
        try:
            name = (path / "name").read_text().strip()
        except OSError as exc:
            failed.append(f"{path / 'name'} cannot be read ({exc.strerror or exc})")
            continue
        names.append(name)
        if name.startswith("package"):
            domain = "cpu"
        elif name == "dram":
            domain = "dram"
        else:
            continue
        _, energy_problem = _read_uj(path / "energy_uj")
        max_range_uj, range_problem = _read_uj(path / "max_energy_range_uj")
        problem = energy_problem or range_problem
        if problem is not None or max_range_uj is None:
            failed.append(f"RAPL zone {name}: {problem}")
            continue
        zones.append(Zone(path, name, domain, max_range_uj / 1e6))
    if problems is not None:
        problems.extend(failed)
    if not any(z.domain == "cpu" for z in zones):
        if failed:
            raise RaplUnavailable("; ".join(failed))
        if not candidates:
            raise RaplUnavailable(f"no RAPL zones under {root} (no powercap intel-rapl here)")
        raise RaplUnavailable(f"no RAPL package zone under {root} (zones found: "
                              f"{', '.join(names) or 'none'})")
    return zones


class RaplMeter(Meter):
    # RAPL counters update every ~1 ms; the sysfs read itself is the limit.
    update_period_s = 0.001
    detects_stall = True
    # A zone wraps after ~262 kJ (minutes at full load); a sysfs read costs microseconds.
    poll_interval_s = 1.0

    def __init__(self, zones: list[Zone], clock: Callable[[], float] | None = None,
                 problems: list[str] | None = None) -> None:
        super().__init__(*(c for c in (clock,) if c is not None))
        self.zones = zones
        self.problems = list(problems or [])   # zones left out, naming the file
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
        problems: list[str] = []
        zones = discover(root, problems)
        return cls(zones, problems=problems)

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
        left_out = [f"{p}; that zone is not measured" for p in self.problems]
        allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        total = os.cpu_count()
        if allowed is not None and total and allowed < total:
            return [*left_out, (f"rapl measures whole CPU packages: this job may use {allowed} of "
                                f"{total} cores, so other work on the node is included in "
                                "cpu/dram energy")]
        return left_out
