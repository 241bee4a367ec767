"""No process outlives its cell: the building blocks.

A cell is a chain of processes: the job's script (the runner) → the measuring child (own
session) → for server backends a guard (own session, `guard.py`) → the server → its engine
processes. Whatever ends the cell (SIGTERM from `scancel` or the runner's timeout, SIGINT,
SIGKILL of any link), every process below dies with it:

- each link asks the kernel for a signal when its parent dies (`PR_SET_PDEATHSIG`, Linux);
- each link that starts others is a child subreaper (`PR_SET_CHILD_SUBREAPER`), so orphans
  are re-parented to it instead of init, where they can still be found and killed;
- termination signals run handlers that SIGKILL the whole tree below before the process dies
  (`on_termination`, `kill_descendants`);
- groups and sessions that a process started are remembered, so they can be killed even once
  their leader is gone (`stop_process_group`).

Under Slurm without cgroups (`proctrack/linuxproc`) the job's processes are found by walking
the process tree at the moment of each signal: a process re-parented to init escapes both
`scancel`'s SIGTERM and the SIGKILL after `KillWait`. The rules above keep every process in
the tree until it is dead.

psutil is imported when this module is, never inside a function: `kill_descendants` runs in
signal handlers, and a second signal whose handler runs while the first one is importing
psutil would find a half-initialised module (AttributeError) and leave the tree alive."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
#: Sent by the kernel when the parent dies: a signal no library here uses for anything else.
PARENT_DEATH_SIGNAL = signal.SIGUSR2
#: Signals that end a cell from outside: scancel and timeouts (TERM), Ctrl-C (INT), hangup.
TERMINATION_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _prctl(option: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def set_parent_death_signal(sig: int = PARENT_DEATH_SIGNAL) -> bool:
    """Ask the kernel to send `sig` to this process when the thread that started it exits
    (its parent's death, in practice). Linux only; False elsewhere."""
    return _prctl(_PR_SET_PDEATHSIG, int(sig))


def become_subreaper() -> bool:
    """Linux: orphans among this process's descendants are re-parented to it, not to init."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def _below() -> dict[int, Any]:
    """This process's descendants, and the members of the groups it started or leads."""
    me = os.getpid()
    try:
        found = {p.pid: p for p in psutil.Process(me).children(recursive=True)}
    except psutil.Error:
        found = {}
    groups = set(_OWNED_GROUPS) | ({me} if os.getpgrp() == me else set())
    for proc in psutil.process_iter():
        try:
            if proc.pid != me and proc.pid not in found and os.getpgid(proc.pid) in groups:
                found[proc.pid] = proc
        except (OSError, psutil.Error):
            continue
    return found


#: How long `kill_descendants` waits, at most, for the processes it SIGKILLed to be dead.
KILL_WAIT_S = 5.0


def kill_descendants(timeout_s: float = KILL_WAIT_S) -> None:
    """SIGKILL every descendant of this process (also those in sessions of their own) and
    every member of the groups it started or leads, then wait until each is dead (gone, or a
    zombie: this process or a subreaper collects those).

    The tree is frozen first (SIGSTOP, repeated until no new process appears), so that a
    process forking at this moment (vLLM's engine starting a worker) cannot leave a child
    behind that a one-shot list would miss. Reaps nothing itself, so a caller's own `waitpid`
    still sees its children's exit statuses. Safe in a signal handler."""
    frozen: dict[int, Any] = {}
    for _ in range(50):
        new = {pid: p for pid, p in _below().items() if pid not in frozen}
        if not new:
            break
        for proc in new.values():
            with contextlib.suppress(psutil.Error):
                proc.suspend()
        frozen.update(new)
    for pgid in list(_OWNED_GROUPS):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    found = list(frozen.values())
    for proc in found:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    deadline = time.monotonic() + timeout_s
    while found and time.monotonic() < deadline:
        found = [p for p in found if _alive(p)]
        if found:
            time.sleep(0.02)


def _alive(proc: Any) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_processes(processes: list[Any], timeout_s: float) -> None:
    """SIGKILL each psutil process that still exists and wait for them to be gone."""
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(processes, timeout=timeout_s)


@contextlib.contextmanager
def on_termination(handler: Callable[[int], None],
                   signals: tuple[int, ...] = TERMINATION_SIGNALS) -> Iterator[None]:
    """Run `handler(signum)` on the given signals while inside the block (main thread only;
    elsewhere the block runs without handlers). The previous handlers are restored after."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda signum, _frame: handler(signum)) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def die_by(signum: int) -> None:
    """End this process by `signum` with its default action, so the parent sees which signal."""
    if signum not in (signal.SIGKILL, signal.SIGSTOP):  # these have no handler to reset
        signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)  # a signal whose default action does not end the process


# ------------------------------------------------------------ groups this process started

#: Process-group ids of the sessions this process started and has not yet stopped.
_OWNED_GROUPS: set[int] = set()


def start_guarded(command: list[str], grace_s: float, **popen_kwargs: Any) -> subprocess.Popen[Any]:
    """Start `command` under `llm_energy.system.guard` in a session of its own: the guard
    leads the group, dies with this process and takes the command's whole tree with it
    (see guard.py). The returned Popen is the guard's; its exit status mirrors the command's.
    `popen_kwargs` go to Popen (stdout, env, ...); the guard's Python is this interpreter."""
    from pathlib import Path

    guard = [sys.executable, "-m", "llm_energy.system.guard", "--parent-pid", str(os.getpid()),
             "--grace-s", f"{grace_s:g}", "--", *command]
    env = dict(popen_kwargs.pop("env", None) or os.environ)
    # The guard imports this package from where this process has it.
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    process = subprocess.Popen(guard, start_new_session=True, shell=False, env=env,
                               **popen_kwargs)
    _OWNED_GROUPS.add(process.pid)
    return process


def stop_process_group(process: subprocess.Popen[Any], grace_s: float) -> None:
    """SIGTERM the group led by `process`, SIGKILL it after `grace_s`, then kill descendants
    that left the group. Returns when the leader is reaped and the strays are gone."""
    try:
        strays = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        strays = []
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait_s)
            # The leader is gone; its group may still hold children (engine core): kill them.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            break
        except subprocess.TimeoutExpired:
            continue
    kill_processes(strays, timeout_s=10.0)
    _OWNED_GROUPS.discard(process.pid)
