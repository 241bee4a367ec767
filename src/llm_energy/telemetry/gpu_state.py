"""Marker files and per-GPU locks of the GPU-control layer (see gpu_control.py): a marker
per GPU names the knobs a cell changed, so that whoever comes next (the cell itself, the
parent runner, the next cell on that GPU) can reset exactly those; a lock file per GPU keeps
two cells from changing, or measuring while another changes, one GPU."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self


class GpuControlError(RuntimeError):
    """A GPU setting could not be checked, applied or restored."""


def _marker(state_dir: Path, ident: str) -> Path:
    return state_dir / f"{ident.replace('/', '_')}.json"


def pending_markers(state_dir: str | os.PathLike, idents: Sequence[str] | None = None,
                    pid: int | None = None) -> list[Path]:
    """Markers present for these GPUs (all when None), only those of process `pid` if given;
    an unreadable marker counts (its knobs are unknown)."""
    state = Path(state_dir)
    paths = [_marker(state, i) for i in idents] if idents is not None else state.glob("*.json")
    found = []
    for path in paths:
        try:
            marker = json.loads(path.read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            marker = {}
        if pid is None or marker.get("pid") == pid:
            found.append(path)
    return found


def restore_from_markers(state_dir: str | os.PathLike, gpus: Any, idents: Sequence[str],
                         pid: int | None = None, log: Callable[[str], None] = print) -> list[str]:
    """Reset the knobs named in markers left for these GPUs (only those written by process
    `pid` when given) and remove each marker once all its knobs are reset. Returns one line
    per knob that could not be reset (its marker stays, so the next cell tries again)."""
    state = Path(state_dir)
    failures: list[str] = []
    for index, ident in enumerate(idents):
        path = _marker(state, ident)
        try:
            marker = json.loads(path.read_text())
        except FileNotFoundError:
            continue
        except ValueError:  # half-written: the knobs are unknown, reset them all
            marker = {"knobs": ["power_limit", "sm_clock", "memory_clock"]}
        if pid is not None and marker.get("pid") != pid:
            continue
        log(f"GPU {ident}: restoring defaults left by process {marker.get('pid')} "
            f"on {marker.get('host')} ({marker.get('settings', 'unknown settings')})")
        failed = _reset(gpus, index, marker.get("knobs", []))
        failures.extend(f"GPU {ident}: {line}" for line in failed)
        if not failed:
            path.unlink(missing_ok=True)
    return failures


def _reset(gpus: Any, index: int, knobs: Sequence[str]) -> list[str]:
    calls = {"sm_clock": gpus.reset_gpu_locked_clocks,
             "memory_clock": gpus.reset_memory_locked_clocks,
             "power_limit": gpus.reset_power_management_limit}
    failed = []
    for knob in ("sm_clock", "memory_clock", "power_limit"):  # clocks first, then the cap
        if knob in knobs:
            try:
                calls[knob](index)
            except Exception as exc:
                failed.append(f"could not reset {knob.replace('_', ' ')}: {type(exc).__name__}: {exc}")
    return failed


class GpuLocks:
    """flock on `<state_dir>/<ident>.lock` per GPU: exclusive for a cell that changes the GPU,
    shared for one that only measures it. Released when the process ends, however it ends.
    On a file system without flock (e.g. Lustre mounted without `flock`) the cell runs
    unlocked and `notes` says so (the scheduler's `gpu_control` resource still applies)."""

    def __init__(self, state_dir: str | os.PathLike, idents: Sequence[str], exclusive: bool,
                 wait_s: float = 60.0, poll_s: float = 0.5) -> None:
        self.state_dir, self.idents, self.exclusive = Path(state_dir), list(idents), exclusive
        self.wait_s, self.poll_s = wait_s, poll_s
        self._files: list[Any] = []
        self.notes: list[str] = []

    def __enter__(self) -> Self:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        mode = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
        try:
            for ident in self.idents:
                handle = open(self.state_dir / f"{ident.replace('/', '_')}.lock", "a+")
                self._files.append(handle)
                deadline = time.monotonic() + self.wait_s
                while True:
                    try:
                        fcntl.flock(handle, mode | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise GpuControlError(
                                f"GPU {ident} is held by another cell for {self.wait_s:g} s: two "
                                "cells must not change or measure one GPU while its settings "
                                "change (run them one at a time: the workflow's gpu_control "
                                "resource)") from None
                        time.sleep(self.poll_s)
                    except OSError as exc:  # ENOLCK/ENOSYS/EINVAL: no flock on this file system
                        self.notes.append(f"GPU {ident} not locked: flock on {self.state_dir} "
                                          f"failed ({exc}); only the gpu_control resource keeps "
                                          "two cells from changing one GPU at once")
                        break
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._files:
            handle.close()  # closing releases the flock
        self._files = []
