"""Idle baselines cached per host + device, with a time-to-live, re-validated before use.

Measuring idle power properly takes tens of seconds per cell; across a sweep of one model on
one GPU it is the same number. A cached value is used only if it is younger than the TTL
*and* a short idle window taken now agrees with it within a tolerance (a GPU that warmed
up, a neighbour job, a different clock state all show up as drift and force a re-measure).

One JSON file per key, written atomically: parallel jobs on one node may race, and the last
complete write wins, which is fine for a cache."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class IdleEntry:
    idle_power_w: float
    measured_at: float       # unix time
    duration_s: float
    host: str
    devices: list[str]
    sources: dict[str, str]
    backend: str


def cache_key(host: str, devices: list[str], sources: dict[str, str], backend: str) -> str:
    text = json.dumps([host, sorted(devices), sorted(sources.items()), backend])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class IdleCache:
    def __init__(self, directory: str | os.PathLike, ttl_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory).expanduser()
        self.ttl_s = ttl_s
        self.clock = clock

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, key: str) -> IdleEntry | None:
        """The cached entry if present, readable and younger than the TTL."""
        if self.ttl_s <= 0:
            return None
        try:
            entry = IdleEntry(**json.loads(self._path(key).read_text()))
        except (OSError, ValueError, TypeError):
            return None  # absent or corrupt: measure again
        age_s = self.clock() - entry.measured_at
        if age_s < 0 or age_s > self.ttl_s:  # a clock set back also invalidates
            return None
        return entry

    def put(self, key: str, entry: IdleEntry) -> None:
        if self.ttl_s <= 0:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{key}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(asdict(entry), handle)
            os.replace(tmp, self._path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def drifted(cached_w: float, check_w: float, tolerance: float) -> bool:
    """Relative drift beyond `tolerance`; below 1 W the comparison is absolute against 1 W,
    so a near-zero estimate does not divide by zero or flap."""
    return abs(check_w - cached_w) > tolerance * max(abs(cached_w), 1.0)


def host_name() -> str:
    return socket.gethostname()
