"""CPU time of one process tree (a process and all its descendants), living or ended.

The `estimate` meter charges a cell for its own processes only (the measuring process and
its children: vLLM's engine core, an API server it started, compile workers), so that other
jobs on the machine neither inflate its energy nor its idle baseline; the contention check
compares this with the whole machine's busy time (`estimate.busy_core_seconds`).

Linux keeps, per process, its own CPU time (`utime + stime`) and that of the children it
has reaped (`cutime + cstime`, which include their own reaped descendants). The tree's time
is accumulated from increments of both, per process identity (pid, start time), so that:

- a descendant seen once and then gone keeps what it was seen to use; when its parent reaps
  it, the parent's `c*time` grows by the child's final total, of which only the part not
  already counted is added (per parent, in `_pending`);
- a descendant that started and ended between two reads (never seen) is counted in full
  when its parent reaps it;
- the total never steps back, whatever the order in which processes end and are reaped.

Unavoidable blind spots: time a process used after its last read when no process of the tree
reaps it (it was re-parented outside the tree), and processes that left the tree by
double-forking. Resolution: the kernel's clock tick (10 ms) per process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psutil

_Key = tuple[int, float]  # (pid, create_time): a pid alone may be reused


def _times(proc: psutil.Process) -> tuple[float, float]:
    """(own, reaped-children) CPU seconds of one process."""
    t = proc.cpu_times()
    return t.user + t.system, getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)


class ProcessTreeCpu:
    """Cumulative CPU seconds of the tree rooted at `pid` (default: this process) since
    construction. Thread-safe. Membership (new descendants) is rescanned at most every
    `scan_period_s` seconds, and on every `read_s(rescan=True)` (window edges): between
    scans only the known processes are read, which is cheap enough for a 10 Hz sampler."""

    def __init__(self, pid: int | None = None, scan_period_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = psutil.Process(pid)
        self.scan_period_s = scan_period_s
        self.clock = clock
        self._lock = threading.Lock()
        self._total_s = 0.0
        self._known: dict[_Key, tuple[psutil.Process, int | None, float, float]] = {}
        self._pending: dict[int, float] = {}   # parent pid -> ended children's counted time
        self._last_scan = float("-inf")
        with self._lock:
            for proc in self._members(rescan=True):
                try:
                    own, reaped = _times(proc)
                    self._known[self._key(proc)] = (proc, self._ppid(proc), own, reaped)
                except psutil.Error:
                    continue

    @staticmethod
    def _key(proc: psutil.Process) -> _Key:
        return proc.pid, proc.create_time()

    @staticmethod
    def _ppid(proc: psutil.Process) -> int | None:
        try:
            return proc.ppid()
        except psutil.Error:
            return None

    def _members(self, rescan: bool) -> list[psutil.Process]:
        now = self.clock()
        if not rescan and now - self._last_scan < self.scan_period_s:
            return [entry[0] for entry in self._known.values()]
        self._last_scan = now
        try:
            children = self.root.children(recursive=True)
        except psutil.Error:
            children = []
        known = {entry[0].pid: entry[0] for entry in self._known.values()}
        # Keep the Process objects already held (psutil caches their identity).
        return [known.get(p.pid, p) for p in [self.root, *children]]

    def read_s(self, rescan: bool = False) -> float:
        """CPU seconds (user + system) the tree used since construction; never decreases."""
        with self._lock:
            readings: dict[_Key, tuple[psutil.Process, float, float]] = {}
            for proc in self._members(rescan):
                try:
                    readings[self._key(proc)] = (proc, *_times(proc))
                except psutil.Error:
                    continue  # ended: handled below as not seen
            # Ended processes first: their parents' reaped times may already include them.
            for key in [k for k in self._known if k not in readings]:
                _, ppid, last_own, last_reaped = self._known.pop(key)
                if ppid is not None:
                    self._pending[ppid] = self._pending.get(ppid, 0.0) + last_own + last_reaped
            for key, (proc, own, reaped) in readings.items():
                entry = self._known.get(key)
                if entry is None:  # started since the last scan: all its time is new
                    entry = (proc, self._ppid(proc), 0.0, 0.0)
                _, ppid, last_own, last_reaped = entry
                d_own = max(0.0, own - last_own)
                d_reaped = max(0.0, reaped - last_reaped)
                # Children reaped since the last read: what was already counted of them
                # while they ran is not counted again.
                already = min(self._pending.get(key[0], 0.0), d_reaped)
                if already:
                    self._pending[key[0]] -= already
                self._total_s += d_own + d_reaped - already
                self._known[key] = (proc, ppid, own, reaped)
            return self._total_s
