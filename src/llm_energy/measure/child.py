"""Measure one cell inside its backend's environment (run by `runner.py` as a child process).

    python -m llm_energy.measure.child --cell cell.json --model-path DIR --out results/<study>/cells/...

On an exception it writes `.error.json` next to the outputs and exits 1; the runner turns
that into a `status = failed` row. With `--parent-pid PID` (the runner passes its own):

- the process kills everything below it and its own process group as soon as its parent is
  gone (told by the kernel, `PR_SET_PDEATHSIG`, and checked every 0.2 s by a thread), so a
  runner killed with kill -9 leaves no measurement running that could write results after
  the job was declared dead;
- SIGTERM, SIGINT and SIGHUP (scancel, the runner's timeout) SIGKILL every descendant (servers
  in sessions of their own, their engines) before the process dies by that signal;
- it is a child subreaper, so descendants orphaned by a dying server stay findable."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from llm_energy.system.processes import (
    PARENT_DEATH_SIGNAL,
    TERMINATION_SIGNALS,
    become_subreaper,
    die_by,
    kill_descendants,
    set_parent_death_signal,
)

ERROR_FILE = ".error.json"
PARENT_PID_FLAG = "--parent-pid"
_PARENT_POLL_S = 0.2

# Substrings of the messages of allocation failures: torch's CPU allocator ("can't allocate
# memory", "not enough memory"), CUDA ("CUDA out of memory"), and Python's MemoryError.
_OOM_MARKERS = ("out of memory", "can't allocate memory", "not enough memory",
                "failed to allocate memory")


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return "out-of-memory"
    text = str(exc).lower()
    return "out-of-memory" if any(m in text for m in _OOM_MARKERS) else "exception"


def _die_with_tree(parent: int | None) -> None:
    """Kill every descendant and, when this process leads its own group (the runner starts it
    in a new session; never a shell's job group), the group; then exit."""
    try:  # descendants that left the group (own sessions) first: they would be orphaned
        kill_descendants(timeout_s=2.0)
    except Exception:
        pass
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os._exit(1)


def _exit_with_parent(parent: int) -> None:
    """Kill this process's tree when the parent (the runner, pid `parent`) dies, also when it
    died before this ran: the kernel's parent-death signal, and a thread that polls."""

    def on_parent_death(_signum: int, _frame: object) -> None:
        if os.getppid() != parent:  # else only the runner's spawning thread ended
            _die_with_tree(parent)

    if threading.current_thread() is threading.main_thread():
        signal.signal(PARENT_DEATH_SIGNAL, on_parent_death)
        set_parent_death_signal(PARENT_DEATH_SIGNAL)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        _die_with_tree(parent)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _stop_tree_on_termination() -> None:
    """SIGTERM/SIGINT/SIGHUP: SIGKILL every descendant, then die by that signal (the runner
    reports it). A graceful server shutdown is not waited for: the cell is over."""

    def on_signal(signum: int, _frame: object) -> None:
        try:
            kill_descendants(timeout_s=2.0)
        finally:
            die_by(signum)

    for sig in TERMINATION_SIGNALS:
        signal.signal(sig, on_signal)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm_energy.measure.child", description=__doc__)
    parser.add_argument("--cell", required=True, help="cell configuration JSON file")
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--out", required=True, help="cell output directory")
    parser.add_argument(PARENT_PID_FLAG, type=int,
                        help="kill this process group when this parent process is gone")
    args = parser.parse_args(argv)
    if args.parent_pid is not None:
        become_subreaper()
        _stop_tree_on_termination()
        _exit_with_parent(args.parent_pid)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / ERROR_FILE).unlink(missing_ok=True)
    try:
        from llm_energy.measure import provenance
        from llm_energy.measure.protocol import CellRunner
        from llm_energy.results import io as results
        from llm_energy.study.cellspec import CellSpec

        cell = CellSpec.model_validate_json(Path(args.cell).read_text()).as_dict()

        runner = CellRunner(cell, args.model_path, log=lambda m: print(m, flush=True))
        output = runner.run()
        if args.parent_pid is not None and os.getppid() != args.parent_pid:
            os._exit(1)  # the job is gone (its watchdog is about to fire): write nothing late
        record = provenance.collect(cell, output.energy_sources)
        record["workload"] = output.workload
        results.write_cell(out, output.runs, output.requests, output.timeseries, record)
    except BaseException as exc:
        traceback.print_exc()
        error = {"type": type(exc).__name__, "message": str(exc).strip().splitlines()[0][:500]
                 if str(exc).strip() else type(exc).__name__, "kind": error_kind(exc)}
        (out / ERROR_FILE).write_text(json.dumps(error))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
