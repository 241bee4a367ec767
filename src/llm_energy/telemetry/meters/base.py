"""The meter interface: energy over named windows, per domain, each with its source.

A meter never turns a fault into a number: a domain whose counter went backwards, stalled,
or could not be read in a window is reported as None with a warning, never as 0 J or as a
negative value. Durations come from the monotonic clock; a wall-clock jump inside a window
(NTP step, VM migration) is flagged because sensors that timestamp on the wall clock (and
a human reading the log) would disagree with it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

DOMAINS = ("gpu", "cpu", "dram")

#: A wall-clock jump larger than this (beyond the monotonic duration) is flagged.
WALL_CLOCK_JUMP_S = 1.0

#: The shortest cycle window any source gets by default (`measurement.min_window_s` unset):
#: a sensor's resolution alone would allow 0.1 s on most, but a second keeps the edge effects
#: (clock ticks, counter update phase, edge samples) around 1% or less.
MIN_WINDOW_FLOOR_S = 1.0
#: A window must span at least this many sensor update periods.
UPDATE_PERIODS_PER_WINDOW = 10


@dataclass
class WindowEnergy:
    """Energy of one window. A domain the meter cannot see is absent (None), never 0 J."""

    duration_s: float
    energy_j: dict[str, float | None]
    source: dict[str, str]
    warnings: list[str] = field(default_factory=list)

    @property
    def total_energy_j(self) -> float | None:
        """Sum over the measured domains; None when any domain the meter covers failed, so a
        partial total is never mistaken for the whole."""
        covered = [self.energy_j.get(d) for d in self.source]
        if not covered or any(v is None for v in covered):
            return None
        return float(sum(covered))  # type: ignore[arg-type]

    @property
    def energy_source(self) -> str:
        """All sources used, e.g. 'nvml-counter+rapl'."""
        return "+".join(sorted(set(self.source.values()))) or "none"


class CounterTrack:
    """Accumulates a hardware energy counter into a monotonic total, across wraparounds.

    `wrap_j` is the counter's range (RAPL's `max_energy_range_uj`): a lower reading than the
    previous one is a wrap, adding `wrap_j - previous + reading`. Without a range (NVML's
    64-bit counter), or when the wrap would imply more than `max_power_w` since the previous
    reading, a lower reading is a reset or a glitch: it is recorded as a fault and the window
    spanning it has no energy for this domain. Thread-safe: the sampler thread polls it so that
    no two wraps fall between two reads."""

    def __init__(self, name: str, wrap_j: float | None = None,
                 max_power_w: float | None = None, fault_log: list[str] | None = None) -> None:
        self.name = name
        self.wrap_j = wrap_j
        self.max_power_w = max_power_w
        self.total_j = 0.0
        self.wraps = 0
        # Tracks of one domain (several GPUs, several sockets) share a log, in time order.
        self.faults: list[str] = [] if fault_log is None else fault_log
        self._last: tuple[float, float] | None = None  # (reading_j, t_s)
        self._lock = threading.Lock()

    def update(self, reading_j: float, t_s: float) -> float:
        with self._lock:
            if self._last is None:
                self._last = (reading_j, t_s)
                return self.total_j
            last_j, last_t = self._last
            delta = reading_j - last_j
            if delta < 0:
                wrapped = None if self.wrap_j is None else self.wrap_j - last_j + reading_j
                plausible = wrapped is not None and wrapped >= 0 and (
                    self.max_power_w is None
                    or wrapped <= self.max_power_w * max(t_s - last_t, 1e-3))
                if plausible:
                    self.wraps += 1
                    delta = wrapped  # type: ignore[assignment]
                else:
                    self.faults.append(
                        f"{self.name} energy counter went backwards ({last_j:.3f} J -> "
                        f"{reading_j:.3f} J): counter reset or glitch")
                    delta = 0.0
            self.total_j += delta
            self._last = (reading_j, t_s)
            return self.total_j


@dataclass
class _OpenWindow:
    t0_s: float
    wall0_s: float
    reading: dict[str, float] | None
    error: str | None
    fault_marks: dict[str, int]


class Meter:
    """Begin/end named windows; windows may nest or overlap.

    Subclasses either implement `read_j` (cumulative joules per domain; the default window
    logic takes differences) or override `begin_window`/`end_window`."""

    #: the update period of the underlying sensor; windows shorter than 10× are flagged.
    update_period_s: float = 0.0
    #: a sensor (not a model): a domain that does not advance over a long window has stalled.
    detects_stall: bool = False

    @property
    def min_window_s(self) -> float:
        """The shortest window this source measures well: 10 update periods, and at least
        `MIN_WINDOW_FLOOR_S` (the default of `measurement.min_window_s`)."""
        return max(MIN_WINDOW_FLOOR_S, UPDATE_PERIODS_PER_WINDOW * self.update_period_s)

    def __init__(self, clock: Callable[[], float] = time.perf_counter,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._open: dict[str, _OpenWindow] = {}
        self.clock = clock
        self.wall_clock = wall_clock

    @property
    def sources(self) -> dict[str, str]:
        """domain -> source name for every domain this meter measures."""
        raise NotImplementedError

    def read_j(self) -> dict[str, float]:
        """Cumulative energy per domain in joules since an arbitrary origin."""
        raise NotImplementedError

    def tracks(self) -> dict[str, CounterTrack]:
        """Per-domain counter accumulators whose faults invalidate a window (if any)."""
        return {}

    #: at most one counter poll per this many seconds (the sampler ticks far faster).
    poll_interval_s: float = 1.0

    def poll(self) -> None:
        """Read the counters so that wraparounds between window edges are not missed;
        rate-limited to `poll_interval_s`, since some counter reads are expensive."""
        now = self.clock()
        if now - getattr(self, "_last_poll_s", float("-inf")) < self.poll_interval_s:
            return
        self._last_poll_s = now
        try:
            self._poll()
        except Exception:  # a failed poll is caught again at the window edge
            pass

    def _poll(self) -> None:
        """What a poll reads; counter meters read their counters."""

    @property
    def static_warnings(self) -> list[str]:
        """Warnings that hold for every window of this meter (e.g. 'estimated')."""
        return []

    # ------------------------------------------------------------ windows

    def _read_safely(self) -> tuple[dict[str, float] | None, str | None]:
        try:
            return self.read_j(), None
        except Exception as exc:  # a sensor error must become a flag, not a crash
            return None, f"{type(exc).__name__}: {exc}"

    def begin_window(self, name: str) -> None:
        reading, error = self._read_safely()
        marks = {d: len(t.faults) for d, t in self.tracks().items()}
        self._open[name] = _OpenWindow(self.clock(), self.wall_clock(), reading, error, marks)

    def _edges(self, name: str) -> tuple[_OpenWindow, float, list[str]]:
        """Pops the window; returns it, its duration and clock warnings."""
        opened = self._open.pop(name)
        duration_s = self.clock() - opened.t0_s
        wall_s = self.wall_clock() - opened.wall0_s
        warnings: list[str] = []
        if duration_s < 0:
            warnings.append(f"window '{name}': the monotonic clock went backwards "
                            f"({duration_s:.3f} s); duration and energy not reported")
        elif abs(wall_s - duration_s) > WALL_CLOCK_JUMP_S + 0.01 * duration_s:
            warnings.append(f"window '{name}': wall clock jumped {wall_s - duration_s:+.1f} s "
                            "(NTP step or suspend?); durations use the monotonic clock")
        if self.update_period_s and 0 <= duration_s < 10 * self.update_period_s:
            warnings.append(
                f"window '{name}' ({duration_s:.3f} s) is shorter than 10x the sensor update "
                f"period ({self.update_period_s:.3f} s)"
            )
        return opened, duration_s, warnings

    def end_window(self, name: str) -> WindowEnergy:
        end_reading, end_error = self._read_safely()
        opened, duration_s, warnings = self._edges(name)
        energy: dict[str, float | None] = {d: None for d in DOMAINS}
        sources = dict(self.sources)
        for error, edge in ((opened.error, "start"), (end_error, "end")):
            if error:
                warnings.append(f"window '{name}': energy read failed at the {edge} ({error}); "
                                f"{'+'.join(sources)} energy not reported")
        if opened.reading is None or end_reading is None or duration_s < 0:
            return WindowEnergy(max(duration_s, 0.0), energy, sources, warnings)
        tracks = self.tracks()
        for domain in sources:
            track = tracks.get(domain)
            new_faults = track.faults[opened.fault_marks.get(domain, 0):] if track else []
            delta = end_reading[domain] - opened.reading[domain]
            if new_faults:
                warnings.extend(f"window '{name}': {f}; {domain} energy not reported"
                                for f in new_faults)
            elif delta < 0:
                warnings.append(f"{domain} energy counter went backwards in window '{name}'; "
                                f"{domain} energy not reported")
            elif (delta == 0 and self.detects_stall and self.update_period_s
                  and duration_s >= 10 * self.update_period_s):
                warnings.append(f"window '{name}': the {domain} energy counter did not advance "
                                f"in {duration_s:.2f} s (stalled sensor); {domain} energy not "
                                "reported")
            elif delta == 0 and duration_s < 10 * self.update_period_s:
                # An unchanged counter over a window this short says the window was below
                # the sensor's resolution, not that it cost 0 J: never report that 0.
                warnings.append(f"window '{name}' ({duration_s:.3f} s): the {domain} energy "
                                "did not advance (below the sensor's resolution); "
                                f"{domain} energy not reported")
            else:
                energy[domain] = float(delta)
        return WindowEnergy(duration_s, energy, sources, warnings)

    def close(self) -> None:
        pass


class CompositeMeter(Meter):
    """Several meters over disjoint domains (e.g. GPU counter + RAPL), one window each."""

    def __init__(self, meters: list[Meter], clock: Callable[[], float] = time.perf_counter,
                 wall_clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock, wall_clock)
        self.meters = meters
        self.update_period_s = max((m.update_period_s for m in meters), default=0.0)

    @property
    def sources(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for m in self.meters:
            merged.update(m.sources)
        return merged

    @property
    def static_warnings(self) -> list[str]:
        return [w for m in self.meters for w in m.static_warnings]

    def poll(self) -> None:
        for m in self.meters:
            m.poll()

    def begin_window(self, name: str) -> None:
        self._open[name] = _OpenWindow(self.clock(), self.wall_clock(), None, None, {})
        for m in self.meters:
            m.begin_window(name)

    def end_window(self, name: str) -> WindowEnergy:
        parts = [m.end_window(name) for m in self.meters]
        _, duration_s, _ = self._edges(name)
        energy: dict[str, float | None] = {d: None for d in DOMAINS}
        sources: dict[str, str] = {}
        warnings: list[str] = []
        for part in parts:
            sources.update(part.source)
            for domain in part.source:
                energy[domain] = part.energy_j.get(domain)
            warnings.extend(w for w in part.warnings if w not in warnings)
        return WindowEnergy(max(duration_s, 0.0), energy, sources, warnings)

    def attach_sampler(self, sampler: object) -> None:
        for m in self.meters:
            attach = getattr(m, "attach_sampler", None)
            if attach:
                attach(sampler)

    def close(self) -> None:
        for m in self.meters:
            m.close()
