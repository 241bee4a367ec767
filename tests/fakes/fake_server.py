"""A server that is hard to stop, for the process-tree tests (no vLLM needed).

    python fake_server.py RECORD.json

Like vLLM's API server it starts an "engine" process in its own process group, plus one worker
that leaves the group (a session of its own); all three ignore SIGTERM. It writes their pids to
RECORD.json (atomically) and then serves nothing, forever. Each process carries RECORD.json in
its command line, so a test finds every one of them by command line."""

import json
import os
import signal
import subprocess
import sys
import time

_IGNORE_TERM_AND_SLEEP = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                          "while True: time.sleep(60)")


def main(record: str) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    engine = subprocess.Popen([sys.executable, "-c", _IGNORE_TERM_AND_SLEEP, "engine", record])
    worker = subprocess.Popen([sys.executable, "-c", _IGNORE_TERM_AND_SLEEP, "worker", record],
                              start_new_session=True)
    tmp = record + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"server": os.getpid(), "engine": engine.pid, "worker": worker.pid}, f)
    os.replace(tmp, record)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main(sys.argv[1])
