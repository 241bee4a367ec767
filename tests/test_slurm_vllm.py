"""A vLLM server cell through `snakemake --profile profiles/slurm` on the local Slurm cluster
(`proctrack/linuxproc`: no cgroups, the job's processes are found by walking the process tree),
ended while the engine runs: by `scancel`, and by Ctrl-C (SIGINT) to Snakemake. Afterwards no
process of the job may be left: not the server (`vllm.entrypoints.openai.api_server`), not its
engine processes, not the measurement. Each test starts one vLLM engine (about a minute)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from conftest import ROOT, SNAKEMAKE, VLLM_PYTHON, small_study, write_config
from test_slurm import _PROBLEM, sacct_states

pytestmark = [
    pytest.mark.slurm, pytest.mark.vllm, pytest.mark.e2e,
    pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or ""),
    pytest.mark.skipif(not VLLM_PYTHON.exists(),
                       reason=f"no vLLM environment at {VLLM_PYTHON} (run `make venv-vllm`)"),
]

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+)")
#: scancel: SIGTERM, then SIGKILL after KillWait (5 s in scripts/local_slurm.sh).
GONE_WITHIN_S = 30.0


def _study() -> dict:
    return small_study(
        backends={"vllm": {"mode": ["server"], "max_num_seqs": [2], "dtype": ["bfloat16"],
                           "enforce_eager": [True], "max_model_len": 128,
                           "gpu_memory_utilization": 0.5}},
        workload={"num_prompts": 2, "input_tokens": 8, "output_tokens": 8},
        measurement={"cycles": 1, "idle_duration_s": 0.2, "idle_cache_ttl_s": 0,
                     "warmup": {"min_runs": 0, "max_runs": 0}, "timeout_s": 900})


def _ours(info: dict, marker: str) -> bool:
    """Runs in, or names, this test's work directory (the job's processes run in it; the
    server's command line has the model path relative to it)."""
    return marker in " ".join(info["cmdline"] or []) or (info["cwd"] or "").startswith(marker)


def _servers(marker: str) -> list[psutil.Process]:
    """vLLM API servers of this test (not the guard that runs one: its command line names the
    server module too)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status", "cwd"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if (SERVER_MODULE in cmdline and _ours(proc.info, marker)
                and "system.guard" not in cmdline
                and proc.info["status"] != psutil.STATUS_ZOMBIE):
            found.append(proc)
    return found


def _job_tree(marker: str) -> list[psutil.Process]:
    """Every live process of this test's run: those running in or naming the work directory,
    and all their descendants."""
    tree: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if _ours(proc.info, marker) and proc.pid != os.getpid():
                tree[proc.pid] = proc
                for child in proc.children(recursive=True):
                    tree[child.pid] = child
        except psutil.Error:
            continue
    return list(tree.values())


def _alive(proc: psutil.Process) -> bool:
    try:  # is_running compares the creation time too: a reused pid is not our process
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _describe(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid} (parent {p.ppid()}): {' '.join(p.cmdline())[:150]}")
        except psutil.Error:
            pass
    return out


def _start_until_engine_runs(tmp_path: Path):
    """Snakemake with the Slurm profile in a session of its own, until the cell's vLLM server
    has started its engine process; returns (snakemake, Slurm job id, snapshot of the tree)."""
    config = write_config(tmp_path, _study())
    log = open(tmp_path / "snakemake.log", "w")  # noqa: SIM115 - closed by the caller's teardown
    snakemake = subprocess.Popen(
        [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--configfile",
         str(config), "--cores", "2", "--profile", str(ROOT / "profiles" / "slurm")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    marker = str(tmp_path)
    deadline = time.monotonic() + 600
    while True:
        text = (tmp_path / "snakemake.log").read_text()
        assert snakemake.poll() is None, text[-4000:]
        assert time.monotonic() < deadline, "no vLLM engine within 600 s:\n" + text[-4000:]
        servers = _servers(marker)
        if servers and any(s.children() for s in servers if _alive(s)):
            break
        time.sleep(1.0)
    (job_id,) = SUBMITTED.findall(text)
    time.sleep(3.0)  # the engine process is up and importing; let it start its own children
    snapshot = _job_tree(marker)
    return snakemake, job_id, snapshot, log


def _late_arrivals(marker: str, snakemake: subprocess.Popen) -> list[psutil.Process]:
    """Processes of the job started after the snapshot (a vLLM worker renamed `VLLM::Worker`
    names nothing of ours, but runs in the work directory); Snakemake itself excepted."""
    exempt = {os.getpid(), snakemake.pid}
    try:
        exempt |= {p.pid for p in psutil.Process(snakemake.pid).children(recursive=True)}
    except psutil.Error:
        pass
    return [p for p in _job_tree(marker) if p.pid not in exempt and _alive(p)]


def _assert_nothing_left(snapshot: list[psutil.Process], marker: str, how: str,
                         snakemake: subprocess.Popen) -> float:
    started = time.monotonic()
    while time.monotonic() - started < GONE_WITHIN_S:
        left = ([p for p in snapshot if _alive(p) and p.pid != snakemake.pid]
                + _late_arrivals(marker, snakemake))
        if not left:
            return time.monotonic() - started
        time.sleep(0.5)
    pytest.fail(f"{how}: {len(left)} process(es) still running {GONE_WITHIN_S:.0f} s later:\n"
                + "\n".join(_describe(left)))


@pytest.fixture
def cleanup():
    state: dict = {}
    yield state
    if (snakemake := state.get("snakemake")) is not None and snakemake.poll() is None:
        os.killpg(snakemake.pid, signal.SIGKILL)
    if state.get("job_id"):
        subprocess.run(["scancel", state["job_id"]], capture_output=True, check=False)
    for proc in state.get("snapshot", []):
        if _alive(proc):
            proc.kill()
    if state.get("log"):
        state["log"].close()


def test_scancel_of_a_running_vllm_server_cell_leaves_no_process(tmp_path, cleanup):
    snakemake, job_id, snapshot, cleanup["log"] = _start_until_engine_runs(tmp_path)
    cleanup.update(snakemake=snakemake, job_id=job_id, snapshot=snapshot)
    servers = [p for p in snapshot if SERVER_MODULE in " ".join(p.cmdline())]
    assert servers and any(p not in servers for p in snapshot), _describe(snapshot)
    print(f"\njob {job_id}: {len(snapshot)} processes before scancel:\n"
          + "\n".join(_describe(snapshot)))
    subprocess.run(["scancel", job_id], check=True, timeout=30)
    took = _assert_nothing_left(snapshot, str(tmp_path), "scancel", snakemake)
    print(f"all gone {took:.1f} s after scancel")
    assert sacct_states([job_id]).get(job_id, "").startswith("CANCELLED")
    snakemake.wait(timeout=120)   # it notices the cancelled job and stops
    assert snakemake.returncode != 0


def test_ctrl_c_to_snakemake_during_a_vllm_server_cell_leaves_no_process(tmp_path, cleanup):
    snakemake, job_id, snapshot, cleanup["log"] = _start_until_engine_runs(tmp_path)
    cleanup.update(snakemake=snakemake, job_id=job_id, snapshot=snapshot)
    os.kill(snakemake.pid, signal.SIGINT)   # what Ctrl-C in its terminal sends
    snakemake.wait(timeout=120)              # Snakemake cancels its Slurm jobs, then exits
    took = _assert_nothing_left(snapshot, str(tmp_path), "Ctrl-C to snakemake", snakemake)
    print(f"\nall gone {took:.1f} s after snakemake exited")
    # Snakemake's Ctrl-C cancels its Slurm jobs (scancel): a job that ran to its end instead
    # (COMPLETED) was never cancelled, and its processes were gone only because it finished.
    # Seen under load: snakemake-interface-executor-plugins 9.4.0 takes the active jobs out of
    # its list while it queries their status (RemoteExecutor._wait_for_jobs) and cancel()
    # cancels only that list, so a Ctrl-C during a slow status query cancels nothing.
    state = sacct_states([job_id]).get(job_id, "")
    if state == "COMPLETED":
        # That upstream race (not ours to fix here; docs/reliability.md): the job ran to its
        # end and left nothing behind, checked above. Reported, not hidden: xfail, not pass.
        pytest.xfail(f"job {job_id} COMPLETED: Snakemake's Ctrl-C cancelled no job (upstream "
                     "race in snakemake-interface-executor-plugins 9.4.0 _wait_for_jobs)")
    assert state.startswith("CANCELLED"), (
        f"job {job_id} ended {state!r}, not CANCELLED: Snakemake did not cancel it on Ctrl-C")
