"""Reliability of the real pipeline (snakemake end to end, real processes, real files):

- failing cells (an exception mid-measurement, a real out-of-memory, SIGKILL as from the OOM
  killer) become `status = failed` rows, the rest of the study runs, the summary and report
  list them, a transient failure succeeds on retry, and snakemake exits non-zero naming them;
- result files corrupted afterwards (truncated, foreign Parquet) are reported by path and the
  rest aggregates;
- kill -9 of the whole snakemake process group mid-measurement leaves nothing that is
  accepted as a result; the rerun redoes exactly that cell.
"""

import base64
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, SNAKEMAKE, dry_run_jobs, small_study, study_dir, write_config
from fakes import fault_env

from llm_energy.analysis.summary import read_problems

pytestmark = pytest.mark.e2e

FAULTS = {1: "fail-once@load", 2: "raise@generate", 3: "oom@load", 4: "sigkill@load"}


def snakemake(workdir: Path, config: Path, env: dict, *args: str, timeout: float = 900):
    cmd = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def runs_file(workdir: Path, batch_size: int) -> Path:
    for path in (study_dir(workdir) / "cells").glob("*/*/*/runs.parquet"):
        if pq.read_table(path, columns=["batch_size"]).column(0)[0].as_py() == batch_size:
            return path
    raise AssertionError(f"no cell with batch_size={batch_size}")


@pytest.fixture(scope="module")
def failing_study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("failing")
    study = small_study(backends={"transformers": {"batch_size": [1, 2, 3, 4, 6]}})
    study["workload"] = {"num_prompts": 2, "input_tokens": 16, "output_tokens": 4}
    study["measurement"].update(cycles=2, idle_duration_s=0.2, retries=1, timeout_s=600)
    study["measurement"].pop("threads")  # torch stays out of the load-stage faults
    config = write_config(workdir, study)
    env = fault_env(FAULTS, workdir / "faults")
    proc = snakemake(workdir, config, env)
    return workdir, config, env, proc


def test_failed_cells_do_not_stop_the_study(failing_study):
    workdir, _, _, proc = failing_study
    results = study_dir(workdir)
    assert (results / "report.html").exists(), proc.stderr[-4000:]
    summary = pd.read_parquet(results / "summary.parquet").set_index("batch_size")
    assert sorted(summary.index) == [1, 2, 3, 4, 6]
    status = summary["status"].to_dict()
    assert status == {1: "ok", 2: "failed", 3: "failed", 4: "failed", 6: "ok"}
    errors = summary["error"].to_dict()
    assert errors[2] == "RuntimeError: injected backend failure (batch_size=2)"
    assert errors[3].startswith("out of memory: RuntimeError:") and "can't allocate memory" in errors[3]
    assert errors[4].startswith("killed by signal SIGKILL") and "out-of-memory killer" in errors[4]
    assert summary.loc[6, "cycles"] == 2 and summary.loc[6, "energy_per_output_token_j"] > 0


def test_transient_failure_succeeds_on_retry(failing_study):
    workdir, *_ = failing_study
    runs = pd.read_parquet(runs_file(workdir, 1))
    assert list(runs["status"]) == ["ok", "ok"] and runs["error"].isna().all()
    log = next((study_dir(workdir) / "logs" / "measure").rglob(
        f"{runs_file(workdir, 1).parent.name}.log")).read_text()
    assert "injected transient failure" in log and "attempt 2/2" in log
    # Failing cells used their retry too, and kept the last error.
    log2 = next((study_dir(workdir) / "logs" / "measure").rglob(
        f"{runs_file(workdir, 2).parent.name}.log")).read_text()
    assert log2.count("failed after") == 2


def test_report_lists_failures(failing_study):
    workdir, *_ = failing_study
    html = (study_dir(workdir) / "report.html").read_text()
    for batch_size in (2, 3, 4):
        cell_id = runs_file(workdir, batch_size).parent.name
        assert f"failed <code>{cell_id}</code>" in html
    assert "injected backend failure" in html and "allocate memory" in html and "SIGKILL" in html


def test_exit_status_names_failed_cells(failing_study):
    workdir, _, _, proc = failing_study
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    message = proc.stderr.split("llm-energy: 3 of 5 cell(s) failed")[1]
    forcerun = message.split("--forcerun ")[1].split()
    for batch_size in (2, 3, 4):
        rel = runs_file(workdir, batch_size).relative_to(workdir)
        assert f"  {rel}: " in message and str(rel) in forcerun
    for batch_size in (1, 6):
        assert str(runs_file(workdir, batch_size).relative_to(workdir)) not in message


def test_corrupt_results_are_reported_and_the_rest_aggregates(failing_study):
    workdir, config, env, _ = failing_study
    truncated, foreign = runs_file(workdir, 6), runs_file(workdir, 2)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    pd.DataFrame({"x": [1, 2], "y": ["a", "b"]}).to_parquet(foreign)
    proc = snakemake(workdir, config, env)
    results = study_dir(workdir)
    summary = pd.read_parquet(results / "summary.parquet")
    assert sorted(summary["batch_size"]) == [1, 3, 4]
    problems = read_problems(results / "summary.parquet")
    rel_truncated, rel_foreign = (str(p.relative_to(workdir)) for p in (truncated, foreign))
    assert sorted(p.split(": ")[0] for p in problems) == sorted([rel_truncated, rel_foreign])
    assert any("not a runs.parquet of llm-energy" in p for p in problems)
    aggregate_log = (results / "logs" / "aggregate.log").read_text()
    assert rel_truncated in aggregate_log and rel_foreign in aggregate_log
    # Unreadable results count as failures in the exit status.
    assert proc.returncode == 1
    message = proc.stderr.split("llm-energy: ")[-1]
    assert f"{rel_truncated}: unreadable" in message and f"{rel_foreign}: unreadable" in message
    # The report lists them (run here from the command line, on the figures already drawn).
    out = workdir / "report-cli.html"
    subprocess.run([str(Path(sys.executable).with_name("llm-energy")), "report", "results/test",
                    "-o", str(out)], cwd=workdir, env=env, check=True, capture_output=True)
    html = out.read_text()
    assert f"unreadable result: {rel_truncated}" in html and f"unreadable result: {rel_foreign}" in html


def test_pipeline_report_lists_unreadable_results(failing_study):
    workdir, *_ = failing_study
    html = (study_dir(workdir) / "report.html").read_text()
    assert "unreadable result: results/test/cells/" in html


def measure_jobs(dry_run_output: str) -> list[str]:
    """cell_ids of the measure jobs in a dry run's job listing."""
    cell_ids, in_measure = [], False
    for line in dry_run_output.splitlines():
        if line.startswith("rule ") or line.startswith("localrule "):
            in_measure = line.split()[1].rstrip(":").startswith("measure_")
        elif in_measure and line.strip().startswith("wildcards:"):
            cell_ids.append(line.split("cell_id=")[1].split(",")[0].strip())
    return cell_ids


def _measuring(workdir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        if "llm_energy.measure.child" in (proc.info["cmdline"] or []) and proc.info["cwd"] == str(workdir):
            found.append(proc)
    return found


def _incomplete(workdir: Path) -> set[str]:
    """Outputs of jobs Snakemake started and has not closed (its .snakemake/incomplete)."""
    markers = workdir / ".snakemake" / "incomplete"
    names = [p.name for p in markers.iterdir()] if markers.exists() else []
    out = set()
    for name in names:
        try:
            out.add(base64.urlsafe_b64decode(name).decode())
        except ValueError:
            pass
    return out


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir()) if not p.name.startswith(".")}


def test_kill_9_mid_measurement_then_rerun_redoes_exactly_that_cell(tmp_path):
    study = small_study()  # two cells, batch sizes 2 and 4
    # Long enough cycles that the kill lands inside the measurement, not between phases.
    study["workload"] = {"num_prompts": 8, "input_tokens": 16, "output_tokens": 48}
    study["measurement"].update(cycles=6, idle_duration_s=0.2)
    config = write_config(tmp_path, study)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # One core: the two cells run one after the other.
    cmd = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(config), "--cores", "1"]
    sm = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                          start_new_session=True)
    cells = study_dir(tmp_path) / "cells"
    logs = study_dir(tmp_path) / "logs" / "measure"
    victim = None
    deadline = time.monotonic() + 600
    try:
        # Wait until Snakemake has closed one cell's job and the other cell has finished its
        # first measured cycle. (Killed between a cell writing its files and Snakemake closing
        # its job, that cell is redone too: Snakemake cannot tell a complete result from one
        # that is not, so it takes the safe side.)
        while victim is None:
            assert sm.poll() is None, "snakemake ended before the kill"
            assert time.monotonic() < deadline
            open_jobs = _incomplete(tmp_path)
            done = {p.parent.name for p in cells.glob("*/*/*/runs.parquet")
                    if str(p.relative_to(tmp_path)) not in open_jobs}
            for log in logs.rglob("*.log") if done else []:
                text = log.read_text()
                if log.stem not in done and "cycle 1/6" in text and "cycle 3/6" not in text:
                    victim = log.stem
            time.sleep(0.05)
        assert _measuring(tmp_path), "the measurement is not running"
        os.killpg(sm.pid, signal.SIGKILL)
        sm.wait()
    finally:
        if sm.poll() is None:
            os.killpg(sm.pid, signal.SIGKILL)
    # The measuring child (a session of its own) notices and takes its group down.
    deadline = time.monotonic() + 10
    while _measuring(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _measuring(tmp_path)
    (victim_dir,) = cells.glob(f"*/*/{victim}")
    assert not (victim_dir / "runs.parquet").exists()
    (survivor_dir,) = [p.parent for p in cells.glob("*/*/*/runs.parquet")]
    before = _digest(survivor_dir)

    # Snakemake's lock is left behind by kill -9; --unlock is the documented way out.
    unlock = subprocess.run([*cmd, "--unlock"], capture_output=True, text=True, env=env)
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    jobs = dry_run_jobs(tmp_path, config)
    assert jobs.get("measure") == 1, jobs
    dry = subprocess.run([*cmd, "-n"], capture_output=True, text=True, env=env)
    assert measure_jobs(dry.stdout) == [victim], dry.stdout[-3000:]

    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert _digest(survivor_dir) == before  # the finished cell was not touched
    redone = pq.read_table(victim_dir / "runs.parquet").to_pandas()
    reference = pq.read_table(survivor_dir / "runs.parquet").to_pandas()
    assert list(redone.columns) == list(reference.columns)
    assert list(redone["cycle"]) == list(range(6)) and (redone["status"] == "ok").all()
    # Each cycle repeats the workload until its window is long enough (`repetitions`, which
    # depends on the cell's speed): the same workload per repetition.
    per_rep = redone["output_tokens"] / redone["repetitions"]
    assert (per_rep == reference["output_tokens"] / reference["repetitions"]).all()
    assert len(pd.read_parquet(victim_dir / "requests.parquet")) / redone["repetitions"].sum() \
        == len(pd.read_parquet(survivor_dir / "requests.parquet")) / reference["repetitions"].sum()
    assert not list(victim_dir.glob(".*.tmp"))
    summary = pd.read_parquet(study_dir(tmp_path) / "summary.parquet")
    assert len(summary) == 2 and (summary["status"] == "ok").all()
    assert dry_run_jobs(tmp_path, config) == {}
