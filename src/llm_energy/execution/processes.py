"""Stopping a child process group for good: its leader, the rest of its group, and the
descendants that started sessions of their own (engine cores, servers)."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any


def stop_process_group(process: subprocess.Popen[Any], grace_s: float) -> None:
    """SIGTERM the group led by `process`, SIGKILL it after `grace_s`, then kill descendants
    that left the group. Returns when the leader is reaped and the strays are gone."""
    import psutil

    try:
        strays = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        strays = []
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=wait_s)
            # The leader is gone; its group may still hold children (engine core): kill them.
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
        except subprocess.TimeoutExpired:
            continue
    kill_processes(strays, timeout_s=10.0)


def kill_processes(processes: list[Any], timeout_s: float) -> None:
    """SIGKILL each psutil process that still exists and wait for them to be gone."""
    import psutil

    for proc in processes:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(processes, timeout=timeout_s)
