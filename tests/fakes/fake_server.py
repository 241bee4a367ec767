"""A server that is hard to stop, for the process-tree tests (no vLLM needed).

    python fake_server.py RECORD.json [--churn]

Like vLLM's API server it starts an "engine" process in its own process group, plus one worker
that leaves the group (a session of its own); all three ignore SIGTERM. It writes their pids to
RECORD.json (atomically) and then serves nothing, forever. Each process carries RECORD.json in
its command line, so a test finds every one of them by command line.

With --churn the engine keeps starting workers (one every few milliseconds, at most 8 alive,
the oldest killed), as vLLM's engine does while it starts: a kill that lists the tree once
and then kills it misses the worker started in between."""

import json
import os
import signal
import subprocess
import sys
import time

_IGNORE_TERM_AND_SLEEP = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                          "while True: time.sleep(60)")
_CHURN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
alive = []
while True:
    alive.append(subprocess.Popen(["/bin/sh", "-c", "trap '' TERM; while :; do sleep 60; done",
                                   sys.argv[2]]))
    if len(alive) > 8:
        oldest = alive.pop(0)
        oldest.kill()
        oldest.wait()
    time.sleep(0.002)
"""


def main(record: str, churn: bool = False) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    engine = subprocess.Popen([sys.executable, "-c", _CHURN if churn else _IGNORE_TERM_AND_SLEEP,
                               "engine", record])
    worker = subprocess.Popen([sys.executable, "-c", _IGNORE_TERM_AND_SLEEP, "worker", record],
                              start_new_session=True)
    tmp = record + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"server": os.getpid(), "engine": engine.pid, "worker": worker.pid}, f)
    os.replace(tmp, record)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main(sys.argv[1], "--churn" in sys.argv[2:])
