"""No process outlives its cell, without vLLM: a fake backend starts a fake server the way the
vLLM server backend starts vLLM (under the guard, in a session of its own); the server starts an
"engine" in its group and a worker in a session of its own, and all three ignore SIGTERM. The
cell is then ended every way a job ends (scancel's SIGTERM, Ctrl-C, kill -9 of any link, of
several links at once, the runner's timeout), and no process of the cell may be left, found by
command line. tests/test_slurm_vllm.py does the same with real vLLM through Slurm."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, small_study
from fakes import fault_env

from llm_energy.study.plan import plan_from_config
from llm_energy.system import guard as guard_module
from llm_energy.system.processes import (
    KILL_WAIT_S,
    PARENT_DEATH_SIGNAL,
    start_guarded,
    stop_process_group,
)

FAKE_SERVER = ROOT / "tests" / "fakes" / "fake_server.py"
#: How long the tree may take to be gone once the cell is ended: a test deadline, not a product
#: constant. No grace is involved: each link SIGKILLs the tree below it as soon as it learns of
#: the end (a signal, or the guard's poll every POLL_S), then waits at most KILL_WAIT_S for the
#: dead; plus 5 s for the scheduling of a loaded machine and this test's own process scans.
#: Measured: 15-30 ms at load average 9 on 2 cores.
GONE_WITHIN_S = guard_module.POLL_S + KILL_WAIT_S + 5.0
#: A cell limit long enough for the fake server to start on a loaded machine.
TIMEOUT_S = 12


def survivors(marker: str) -> list[psutil.Process]:
    """Live (non-zombie) processes whose command line mentions `marker`."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
                continue
            if marker in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def wait_all_gone(marker: str, timeout_s: float = GONE_WITHIN_S) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        left = survivors(marker)
        if not left or time.monotonic() > deadline:
            return [" ".join(p.cmdline())[:160] for p in left if p.is_running()]
        time.sleep(0.1)


@pytest.fixture
def cleanup():
    """Whatever a failing test leaves is killed at teardown (by command line)."""
    markers: list[str] = []
    yield markers
    for marker in markers:
        for proc in survivors(marker):
            try:
                proc.kill()
            except psutil.Error:
                pass


def cell_config(batch_size: int, **measurement) -> dict:
    study = small_study(backends={"transformers": {"batch_size": [batch_size]}})
    study["measurement"] = {**study["measurement"], **measurement}
    study["measurement"].pop("threads")
    (cell_id,) = (plan := plan_from_config(study)).cells
    return plan.cell_params(cell_id)


def start_serving_cell(tmp_path: Path, cleanup: list[str], **measurement):
    """The job's script running a cell whose backend is serving; returns (job, pids, marker)."""
    marker = str(tmp_path)
    cleanup.append(marker)
    fault_dir = tmp_path / "faults"
    env = fault_env({21: "server@load"}, fault_dir)
    cell = cell_config(21, **measurement)
    cell_json = tmp_path / "cell.json"
    cell_json.write_text(json.dumps(cell))
    with open(tmp_path / "job.log", "w") as log:
        # The job script's standalone twin (`llm-energy measure`): same runner, same signals.
        job = subprocess.Popen([sys.executable, "-m", "llm_energy.cli", "measure",
                                str(cell_json), "unused-model-path", str(tmp_path / "out")],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while not list(fault_dir.glob("server-*.json")):
        assert job.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the fake server did not start"
        time.sleep(0.1)
    (record,) = fault_dir.glob("server-*.json")
    pids = {"runner": job.pid, **json.loads(record.read_text())}
    assert all(psutil.pid_exists(p) for p in pids.values()), pids
    return job, pids, marker


def _kill(pids: dict[str, int], names: tuple[str, ...], sig: int) -> None:
    for name in names:
        try:
            os.kill(pids[name], sig)
        except ProcessLookupError:
            pass


ALL = ("runner", "measure", "guard", "server", "engine", "worker")


@pytest.mark.parametrize("how, targets, sig", [
    ("scancel: SIGTERM to the job's script", ("runner",), signal.SIGTERM),
    ("Ctrl-C: SIGINT to the job's script", ("runner",), signal.SIGINT),
    ("kill -9 of the job's script", ("runner",), signal.SIGKILL),
    ("kill -9 of the script and the measurement at once", ("runner", "measure"), signal.SIGKILL),
    ("kill -9 of the server's guard", ("guard",), signal.SIGKILL),
    ("scancel's sweep: SIGTERM to every process at once", ALL, signal.SIGTERM),
])
def test_no_process_outlives_an_ended_job(tmp_path, cleanup, how, targets, sig):
    # A guard killed alone leaves the engine and worker to the measurement (a subreaper),
    # which stops them when the cell ends: here by its timeout. The job itself lives on until
    # it has written the failed cell (cold imports of the Parquet writer: seconds on a loaded
    # machine), so the clock starts when the job has ended, not at the kill.
    guard_only = targets == ("guard",)
    job, pids, marker = start_serving_cell(tmp_path, cleanup,
                                           **({"timeout_s": TIMEOUT_S} if guard_only else {}))
    _kill(pids, targets, sig)
    if guard_only:
        assert job.wait(timeout=300) == 0
    ended = time.monotonic()
    left = wait_all_gone(marker, GONE_WITHIN_S)
    took = time.monotonic() - ended
    assert left == [], f"{how}: still running {took:.1f} s after the job ended: {left}"
    job.wait(timeout=10)
    if guard_only:  # ended by the measurement's timeout, which took the engine and worker down
        (row,) = pq.read_table(tmp_path / "out" / "runs.parquet").to_pylist()
        assert row["error"].startswith("timeout:")
    if "runner" in targets:  # the job did not finish: no result that would look valid
        assert not (tmp_path / "out" / "runs.parquet").exists()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_measurement_killed_alone_takes_its_server_down_and_the_cell_fails(tmp_path, cleanup, sig):
    job, pids, marker = start_serving_cell(tmp_path, cleanup)
    _kill(pids, ("measure",), sig)
    assert job.wait(timeout=60) == 0     # the runner survives and writes the failed cell
    assert wait_all_gone(marker) == []
    (row,) = pq.read_table(tmp_path / "out" / "runs.parquet").to_pylist()
    assert row["status"] == "failed" and signal.Signals(sig).name in row["error"]


def test_timeout_kills_the_server_tree(tmp_path, cleanup):
    """The runner's own timeout: SIGTERM to the measurement, which kills its tree."""
    job, _, marker = start_serving_cell(tmp_path, cleanup, timeout_s=TIMEOUT_S)
    assert job.wait(timeout=60) == 0
    assert wait_all_gone(marker) == []
    (row,) = pq.read_table(tmp_path / "out" / "runs.parquet").to_pylist()
    assert row["error"].startswith("timeout:")


def test_guard_stops_a_server_that_ignores_sigterm(tmp_path, cleanup):
    """close(): SIGTERM to the group, ignored; after the grace the whole tree is SIGKILLed,
    and the guard reports the server's own end (killed by SIGKILL)."""
    cleanup.append(str(tmp_path))
    record = tmp_path / "pids.json"
    guard = start_guarded([sys.executable, str(FAKE_SERVER), str(record)], grace_s=0.5)
    deadline = time.monotonic() + 60
    while not record.exists():
        assert time.monotonic() < deadline and guard.poll() is None
        time.sleep(0.05)
    started = time.monotonic()
    stop_process_group(guard, grace_s=5.0)
    assert time.monotonic() - started < 5.0     # the guard's own 0.5 s grace did it
    assert guard.returncode == -signal.SIGKILL
    assert wait_all_gone(str(tmp_path)) == []


@pytest.mark.parametrize("attempt", range(3))
def test_a_process_started_while_the_tree_is_killed_is_not_missed(tmp_path, cleanup, attempt):
    """The engine starts a worker every few milliseconds (as vLLM's engine does while it
    starts): the guard's parent dies, and the guard must kill the tree without leaving the
    worker that was being started at that moment (the tree is frozen before it is killed)."""
    cleanup.append(str(tmp_path))
    record = tmp_path / "pids.json"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from llm_energy.system.processes import start_guarded\n"
        f"start_guarded([sys.executable, {str(FAKE_SERVER)!r}, {str(record)!r}, '--churn'], 1.0)\n"
        "time.sleep(600)")])
    deadline = time.monotonic() + 60
    while not record.exists():
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)   # the engine is churning
    parent.kill()
    parent.wait()
    left = wait_all_gone(str(tmp_path))
    assert left == [], left


def test_guard_cleans_up_when_the_server_exits_by_itself(tmp_path, cleanup):
    """The server dies (crash, OOM kill): its engine and worker go with it, and the guard's
    exit status is the server's."""
    cleanup.append(str(tmp_path))
    record = tmp_path / "pids.json"
    guard = start_guarded([sys.executable, str(FAKE_SERVER), str(record)], grace_s=0.5)
    deadline = time.monotonic() + 60
    while not record.exists():
        assert time.monotonic() < deadline and guard.poll() is None
        time.sleep(0.05)
    os.kill(json.loads(record.read_text())["server"], signal.SIGKILL)
    assert guard.wait(timeout=10) == -signal.SIGKILL
    assert wait_all_gone(str(tmp_path)) == []


def test_guard_kills_the_tree_when_parent_death_signals_repeat(tmp_path, cleanup):
    """Parent and grandparent (both subreapers) killed at once: the guard is re-parented twice,
    so the kernel's parent-death signal arrives again while the first one's handler is killing
    the tree. A burst of such signals must not interrupt the kill half-way (a handler run inside
    the first one's import of psutil once made the guard die and leave the engine and worker)."""
    cleanup.append(str(tmp_path))
    record = tmp_path / "pids.json"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from llm_energy.system.processes import start_guarded\n"
        f"start_guarded([sys.executable, {str(FAKE_SERVER)!r}, {str(record)!r}], 1.0)\n"
        "time.sleep(600)")])
    deadline = time.monotonic() + 60
    while not record.exists():
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.05)
    (guard,) = [p for p in survivors(str(tmp_path)) if "llm_energy.system.guard" in p.cmdline()]
    parent.kill()
    parent.wait()
    burst_until = time.monotonic() + 1.0
    while time.monotonic() < burst_until:   # repeated parent-death signals during the kill
        try:   # psutil checks that the pid was not reused
            guard.send_signal(PARENT_DEATH_SIGNAL)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.0005)
    assert wait_all_gone(str(tmp_path)) == []
