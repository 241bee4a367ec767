"""Run a server so that it cannot outlive the process that started it.

    python -m llm_energy.system.guard --parent-pid PID [--grace-s S] -- COMMAND ...

Started by `processes.start_guarded` in a session of its own, the guard leads the server's
process group and:

- is told by the kernel when its parent dies (`PR_SET_PDEATHSIG`), and also checks every
  `POLL_S`; then it SIGKILLs the whole tree below it at once (no grace) and exits;
- starts COMMAND in its group with `PR_SET_PDEATHSIG = SIGKILL`, so the server dies if the
  guard itself is SIGKILLed;
- is a child subreaper: the server's own children (vLLM's engine core, workers) are
  re-parented to the guard when the server dies, and killed; so is anything left when the
  server exits by itself;
- on SIGTERM/SIGINT/SIGHUP while its parent lives (a normal stop): forwards SIGTERM to the
  server and SIGKILLs the tree after `--grace-s` seconds if it is still there.

Its exit status mirrors the server's (killed by signal N → killed by signal N), so the
caller's error messages stay the server's. Imports only the standard library and psutil."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from llm_energy.system.processes import (
    PARENT_DEATH_SIGNAL,
    TERMINATION_SIGNALS,
    become_subreaper,
    die_by,
    kill_descendants,
    set_parent_death_signal,
)

#: How often the guard checks that its parent lives (besides the kernel's parent-death signal).
POLL_S = 0.1
_HANDLED_SIGNALS = (*TERMINATION_SIGNALS, PARENT_DEATH_SIGNAL)


def _server_preexec() -> None:  # runs in the forked child, before exec; the guard has no threads
    set_parent_death_signal(signal.SIGKILL)


class Guard:
    def __init__(self, parent_pid: int, grace_s: float) -> None:
        self.parent_pid = parent_pid
        self.grace_s = grace_s
        self.server: subprocess.Popen[bytes] | None = None
        self.kill_at: float | None = None
        self.abandoning = False

    def parent_gone(self) -> bool:
        return os.getppid() != self.parent_pid

    def abandon(self) -> None:
        """The parent is gone: nothing below may survive it. Runs to the end once: the parent
        and the grandparent killed together re-parent the guard twice, so a second parent-death
        signal can arrive during the kill; its handler (run by Python inside this one) must not
        start over or cut this one short. If the kill itself fails, the guard's group (server,
        engine) is SIGKILLed with the guard."""
        if self.abandoning:
            return
        self.abandoning = True
        signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED_SIGNALS)
        try:
            kill_descendants()
        except BaseException:
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os._exit(1)

    def on_signal(self, signum: int, _frame: object = None) -> None:
        if self.abandoning:
            return
        if self.parent_gone():
            self.abandon()
        if signum == PARENT_DEATH_SIGNAL:
            return  # the thread that started us ended, not our parent: keep serving
        if self.server is not None and self.server.returncode is None:
            try:  # os.kill, not Popen.send_signal: that polls, and _reap owns waitpid
                os.kill(self.server.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if self.kill_at is None:
            self.kill_at = time.monotonic() + self.grace_s

    def _reap(self) -> None:
        """Reap every exited child: the server (status kept) and adopted orphans."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.server is not None and pid == self.server.pid:
                self.server.returncode = os.waitstatus_to_exitcode(status)

    def run(self, command: list[str]) -> int:
        for sig in _HANDLED_SIGNALS:
            signal.signal(sig, self.on_signal)
        set_parent_death_signal(PARENT_DEATH_SIGNAL)
        become_subreaper()
        if self.parent_gone():  # died before the death signal was armed
            self.abandon()
        self.server = subprocess.Popen(command, preexec_fn=_server_preexec)
        while self.server.returncode is None:
            time.sleep(POLL_S)
            if self.parent_gone():
                self.abandon()
            self._reap()
            if self.kill_at is not None and time.monotonic() > self.kill_at:
                kill_descendants()
        # The server is gone: whatever it left (engine processes) goes too.
        kill_descendants()
        self._reap()
        return self.server.returncode


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llm_energy.system.guard",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--grace-s", type=float, default=20.0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    code = Guard(args.parent_pid, args.grace_s).run(command)
    sys.stdout.flush()
    if code < 0:
        die_by(-code)
    os._exit(code)


if __name__ == "__main__":
    main()
