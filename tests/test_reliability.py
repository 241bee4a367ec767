"""Failing cells at the runner level, with real processes: a backend exception, an
out-of-memory (a real allocation failure; SIGKILL as from the kernel's OOM killer), a crash,
a hang killed with its whole process tree, a runner killed with kill -9, retries, and a writer
killed at random moments. Faults come from the test-only backend in tests/fakes/.

Faults here fire while loading, before torch is imported, so each cell costs about a second
of interpreter start-up (several seconds on a loaded machine)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, small_study
from fakes import fault_env

from llm_energy.execution import runner
from llm_energy.results.io import CELL_FILES, write_cell
from llm_energy.study.plan import plan_from_config


def cell_config(batch_size: int, **measurement) -> dict:
    study = small_study(backends={"transformers": {"batch_size": [batch_size]}})
    study["measurement"] = {**study["measurement"], **measurement}
    study["measurement"].pop("threads")  # keep torch out of load-stage faults
    plan = plan_from_config(study)
    (cell_id,) = plan.cells
    return {k: v for k, v in plan.cell_params(cell_id).items() if k != "workload_file"}


@pytest.fixture
def faults(monkeypatch, tmp_path):
    """Set the fault environment for children of this process; returns the fault dir.
    Whatever a hang fault started is killed at teardown, also when the test failed."""
    fault_dir = tmp_path / "faults"

    def set_faults(spec: dict[int, str]) -> Path:
        for key, value in fault_env(spec, fault_dir).items():
            if os.environ.get(key) != value:
                monkeypatch.setenv(key, value)
        return fault_dir
    yield set_faults
    for record in [*fault_dir.glob("hang-*.json"), *fault_dir.glob("orphan-*.json")]:
        for pid in json.loads(record.read_text()).values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def run(cell: dict, out: Path, model_path: str = "unused-model-path") -> tuple[str, str, list[dict]]:
    log_path = out.parent / "log.txt"
    with open(log_path, "w") as log:
        status = runner.run_cell(cell, model_path, out, log=log, project_dir=ROOT)
    rows = pq.read_table(out / "runs.parquet").to_pylist()
    return status, log_path.read_text(), rows


def assert_failed_cell(out: Path, rows: list[dict], cell: dict) -> str:
    assert {p.name for p in out.iterdir() if not p.name.startswith(".")} == set(CELL_FILES)
    assert len(rows) == 1 and rows[0]["status"] == "failed" and rows[0]["cell_id"] == cell["cell_id"]
    assert rows[0]["batch_size"] == cell["settings"]["batch_size"]
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["status"] == "failed" and provenance["error"] == rows[0]["error"]
    assert not list(out.glob(".*.tmp"))
    return rows[0]["error"]


def test_backend_exception_is_a_failed_row(faults, tmp_path):
    faults({2: "raise@load"})
    cell, out = cell_config(2), tmp_path / "cell"
    out.mkdir()
    (out / ".runs.parquet.stale.tmp").write_text("left by a killed writer")
    status, log, rows = run(cell, out)
    assert status == "failed"
    assert assert_failed_cell(out, rows, cell) == "RuntimeError: injected backend failure (batch_size=2)"
    assert "Traceback" in log and "attempt 1/1" in log


def test_out_of_memory_is_named(faults, tmp_path):
    faults({3: "oom@load"})
    cell, out = cell_config(3), tmp_path / "cell"
    status, _, rows = run(cell, out)
    error = assert_failed_cell(out, rows, cell)
    assert status == "failed"
    assert error.startswith("out of memory: RuntimeError: ") and "can't allocate memory" in error


def test_sigkill_is_reported_as_likely_oom_kill(faults, tmp_path):
    faults({4: "sigkill@load"})
    cell, out = cell_config(4), tmp_path / "cell"
    status, _, rows = run(cell, out)
    error = assert_failed_cell(out, rows, cell)
    assert status == "failed" and "SIGKILL" in error and "out-of-memory killer" in error


def test_crash_without_error_file(faults, tmp_path):
    faults({5: "exit@load"})
    cell, out = cell_config(5), tmp_path / "cell"
    _, _, rows = run(cell, out)
    assert assert_failed_cell(out, rows, cell) == "measurement process exited with status 3"


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pids, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(_gone(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


def test_hang_is_killed_with_its_whole_process_tree(faults, tmp_path, monkeypatch):
    fault_dir = faults({6: "hang@load"})
    monkeypatch.setattr(runner, "_KILL_GRACE_S", 1.0)
    cell, out = cell_config(6, timeout_s=4), tmp_path / "cell"
    started = time.monotonic()
    status, log, rows = run(cell, out)
    elapsed = time.monotonic() - started
    error = assert_failed_cell(out, rows, cell)
    assert status == "failed"
    assert error == "timeout: the cell ran longer than measurement.timeout_s=4 s and was killed"
    # 4 s limit + 1 s SIGTERM grace (ignored by the hanging process) + SIGKILL.
    assert elapsed < 15, elapsed
    (record,) = fault_dir.glob("hang-*.json")
    pids = json.loads(record.read_text())
    # The measuring process, a grandchild in its group and one that left it (own session).
    assert _wait_gone(pids.values(), 5), {k: _gone(p) for k, p in pids.items()}


def test_orphan_in_its_own_session_is_killed_when_the_measurement_dies(faults, tmp_path):
    """The measuring process dies by SIGKILL after starting a child in a session of its own
    (as a server backend does): the runner adopts the orphan (child subreaper) and kills it."""
    fault_dir = faults({11: "orphan@load"})
    cell, out = cell_config(11), tmp_path / "cell"
    status, _, rows = run(cell, out)
    assert status == "failed" and "SIGKILL" in rows[0]["error"]
    (record,) = fault_dir.glob("orphan-*.json")
    assert _wait_gone(json.loads(record.read_text()).values(), 5)


def test_transient_failure_counts_attempts(faults, tmp_path):
    fault_dir = faults({7: "fail-once@load"})
    cell, out = cell_config(7, retries=0), tmp_path / "cell"
    status, log, rows = run(cell, out)
    # No retry configured: the transient failure is final.
    assert status == "failed" and "transient" in rows[0]["error"]
    assert (fault_dir / "failed-once-7").exists() and "attempt 1/1" in log


def test_retries_are_all_used_then_the_last_error_is_kept(faults, tmp_path):
    faults({8: "raise@load"})
    cell, out = cell_config(8, retries=2), tmp_path / "cell"
    status, log, rows = run(cell, out)
    assert status == "failed" and log.count("failed after") == 3
    assert "attempt 3/3" in log and "injected backend failure" in rows[0]["error"]


def test_missing_environment_fails_the_cell(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_ENERGY_PYTHON_TRANSFORMERS", "")
    monkeypatch.setattr(runner, "python_for_backend", lambda *a: (_ for _ in ()).throw(
        runner.EnvironmentMissing("no environment for backend 'transformers': run `make venv-transformers`")))
    cell, out = cell_config(9), tmp_path / "cell"
    status, _, rows = run(cell, out)
    assert status == "failed" and "make venv-transformers" in rows[0]["error"]


def test_killed_runner_takes_its_measurement_down(faults, tmp_path):
    """kill -9 of the job's script (what Snakemake runs): the measuring child, in a session of
    its own, must not keep running and write results after the job was declared dead."""
    fault_dir = faults({10: "hang@load"})
    cell, out = cell_config(10), tmp_path / "cell"
    cell_json = tmp_path / "cell.json"
    cell_json.write_text(json.dumps(cell))
    # The measure job's work, run by hand (`llm-energy measure`, the script's standalone form).
    job = subprocess.Popen([sys.executable, "-m", "llm_energy.cli", "measure",
                            str(cell_json), "unused-model-path", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(fault_dir.glob("hang-*.json")) and time.monotonic() < deadline:
        assert job.poll() is None
        time.sleep(0.2)
    (record,) = fault_dir.glob("hang-*.json")
    pids = json.loads(record.read_text())
    assert not any(_gone(p) for p in pids.values())
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert _wait_gone(pids.values(), 5), {k: _gone(p) for k, p in pids.items()}
    assert not (out / "runs.parquet").exists()


_WRITER = """
import sys, itertools
from pathlib import Path
from llm_energy.results.io import write_cell
root = Path(sys.argv[1])
rows = [{"cell_id": "c", "cycle": i, "model": "m", "backend": "b", "status": "ok",
         "warnings": ["w" * 50] * 20} for i in range(2000)]
requests = [{"cell_id": "c", "cycle": 0, "request_id": i, "itl_ms": [1.0] * 200} for i in range(2000)]
print("ready", flush=True)
for n in itertools.count():
    write_cell(root / f"cell{n}", rows, requests, requests[:10], {"n": n})
"""


def test_writer_killed_at_random_moments_leaves_no_partial_result(tmp_path):
    """A cell directory with runs.parquet must be complete and readable, whenever the
    writing process was killed; one without it is what Snakemake and aggregation reject."""
    rng = random.Random(7)
    checked = 0
    for attempt in range(4):
        root = tmp_path / f"try{attempt}"
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(root)], stdout=subprocess.PIPE,
                                text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.2, 1.5))
        proc.kill()
        proc.wait()
        for cell in sorted(root.glob("cell*")):
            names = {p.name for p in cell.iterdir() if not p.name.startswith(".")}
            if "runs.parquet" in names:
                assert names == set(CELL_FILES)
                assert pq.read_table(cell / "runs.parquet").num_rows == 2000
                assert pq.read_table(cell / "requests.parquet").num_rows == 2000
                json.loads((cell / "provenance.json").read_text())
            # Whatever is in place under its final name is whole: only temp files are partial.
            for name in names & {"requests.parquet", "timeseries.parquet"}:
                pq.read_table(cell / name)
            checked += 1
    assert checked >= 4


def test_failure_message_lists_failed_and_unreadable_cells(tmp_path):
    ok_cell, bad_cell = cell_config(2), cell_config(3)
    ok_dir, bad_dir, broken_dir = tmp_path / "ok", tmp_path / "bad", tmp_path / "broken"
    runner.write_failed_cell(bad_cell, bad_dir, "RuntimeError: boom")
    write_cell(ok_dir, [{"cell_id": ok_cell["cell_id"], "cycle": 0, "status": "ok"}], [], [], {})
    broken_dir.mkdir()
    (broken_dir / "runs.parquet").write_bytes((bad_dir / "runs.parquet").read_bytes()[:100])
    files = [str(d / "runs.parquet") for d in (ok_dir, bad_dir, broken_dir, tmp_path / "not-run")]
    assert runner.failed_cells(files) == [f"{files[1]}: RuntimeError: boom",
                                          f"{files[2]}: unreadable (ArrowInvalid)"]
    message = runner.failure_message(files)
    assert message.startswith("llm-energy: 2 of 4 cell(s) failed")
    assert f"--forcerun {files[1]} {files[2]}" in message
    assert runner.failure_message(files[:1]) is None


def test_aggregation_reports_unreadable_files_by_path_and_keeps_the_rest(tmp_path):
    from llm_energy.analysis.summary import aggregate, read_problems, write_summary

    good, failed = tmp_path / "good", tmp_path / "failed"
    write_cell(good, [{"cell_id": "a" * 12, "cycle": c, "model": "m", "backend": "b",
                       "status": "ok", "total_energy_j": 10.0 + c, "warnings": []}
                      for c in range(3)], [], [], {})
    runner.write_failed_cell(cell_config(2), failed, "RuntimeError: boom")
    truncated, foreign, future, empty = (tmp_path / n / "runs.parquet"
                                         for n in ("truncated", "foreign", "future", "empty"))
    for path in (truncated, foreign, future, empty):
        path.parent.mkdir()
    data = (good / "runs.parquet").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    pq.write_table(pa.table({"x": [1]}), foreign)
    table = pq.read_table(good / "runs.parquet")
    pq.write_table(table.set_column(0, "schema_version", pa.array([2] * 3)), future)
    empty.write_bytes(b"")
    paths = [good / "runs.parquet", truncated, failed / "runs.parquet", foreign, future, empty]
    agg = aggregate(paths)
    assert sorted(agg.summary["status"]) == ["failed", "ok"]
    assert agg.summary.set_index("status").loc["ok", "total_energy_j"] == 11.0
    by_path = {p.split(": ")[0]: p for p in agg.problems}
    assert set(by_path) == {str(truncated), str(foreign), str(future), str(empty)}
    assert "no cell_id/schema_version" in by_path[str(foreign)]
    assert "schema_version [2] (expected 1)" in by_path[str(future)]
    write_summary(agg, tmp_path / "summary.parquet", tmp_path / "summary.csv")
    assert read_problems(tmp_path / "summary.parquet") == agg.problems


def test_failure_message_uses_an_up_to_date_summary_and_falls_back_otherwise(tmp_path):
    import os

    from llm_energy.analysis.summary import aggregate, write_summary

    ok_cell, bad_cell = cell_config(2), cell_config(3)
    ok_dir, bad_dir, broken_dir = (tmp_path / "cells" / c["cell_id"] for c in (ok_cell, bad_cell, cell_config(4)))
    runner.write_failed_cell(bad_cell, bad_dir, "RuntimeError: boom")
    write_cell(ok_dir, [{"cell_id": ok_cell["cell_id"], "cycle": 0, "model": "m", "backend": "b",
                         "status": "ok", "warnings": []}], [], [], {})
    broken_dir.mkdir(parents=True)
    (broken_dir / "runs.parquet").write_bytes((bad_dir / "runs.parquet").read_bytes()[:100])
    files = [str(d / "runs.parquet") for d in (ok_dir, bad_dir, broken_dir)]
    summary = tmp_path / "summary.parquet"
    write_summary(aggregate(files), summary, tmp_path / "summary.csv")
    from_files = runner.failed_cells(files)
    assert runner.failed_cells_from_summary(files, summary) == from_files
    assert runner.failure_message(files, summary) == runner.failure_message(files)
    # The summary, not the files, is read: a result rewritten with an older time is not seen...
    write_cell(bad_dir, [{"cell_id": bad_cell["cell_id"], "cycle": 0, "status": "ok"}], [], [], {})
    earlier = summary.stat().st_mtime - 10
    os.utime(bad_dir / "runs.parquet", (earlier, earlier))
    assert runner.failed_cells_from_summary(files, summary) == from_files
    assert runner.failed_cells(files) == from_files[1:]
    # ...unless the result is newer than the summary: then the files are read again.
    runner.write_failed_cell(ok_cell, ok_dir, "RuntimeError: later")
    later = summary.stat().st_mtime + 10
    os.utime(ok_dir / "runs.parquet", (later, later))
    assert runner.failed_cells_from_summary(files, summary) is None
    assert f"{files[0]}: RuntimeError: later" in runner.failure_message(files, summary)
    assert runner.failed_cells_from_summary(files, tmp_path / "missing.parquet") is None


def test_self_threaded_backends_do_not_inherit_scheduler_thread_counts(monkeypatch):
    """Snakemake exports OPENBLAS/MKL/..._NUM_THREADS=threads to script jobs; vLLM-CPU binds
    its own OpenMP threads and ran 25x slower with them, so its cells start without."""
    from llm_energy.execution.runner import measurement_environment

    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert "OPENBLAS_NUM_THREADS" not in measurement_environment("vllm")
    assert "OMP_NUM_THREADS" not in measurement_environment("vllm")
    assert measurement_environment("transformers")["OMP_NUM_THREADS"] == "2"


def test_a_cell_whose_requests_all_fail_is_failed_with_their_reason(faults, tmp_path,
                                                                    demo_model_dir):
    """Every request stops short (as at a context limit) without any exception: the cell is
    `failed` with the backend's reason, the workflow's exit check lists it, and the report
    counts it as failed."""
    import pandas as pd

    from llm_energy.analysis.report import render
    from llm_energy.analysis.summary import aggregate

    faults({5: "short@generate"})
    cell, out = cell_config(5), tmp_path / "cell"
    status, _, rows = run(cell, out, str(demo_model_dir))
    error = assert_failed_cell(out, rows, cell)
    assert status == "failed"
    assert error == ("RuntimeError: every request of the warmup failed (4): transformers "
                     "returned 4 tokens, expected 8 (injected context limit)")
    runs_file = str(out / "runs.parquet")
    assert f"{runs_file}: {error}" in runner.failure_message([runs_file])
    summary = aggregate([runs_file]).summary
    assert list(summary["status"]) == ["failed"]
    html = render(summary, pd.DataFrame({"status": []}), [], {}, [], "study")
    assert "1 cell(s) measured, 1 failed" in html and error in html


def test_cuda_cell_without_a_gpu_meter_fails_instead_of_using_the_cpu_estimate(tmp_path):
    """This machine has no NVML: a cuda cell must not be metered by the CPU estimate unless
    the study asked for `energy_source: estimate`."""
    cell, out = cell_config(12), tmp_path / "cell"
    cell["measurement"]["device"] = "cuda"
    status, _, rows = run(cell, out)
    assert status == "failed"
    assert "no GPU energy meter" in rows[0]["error"] and "NVML" in rows[0]["error"]
    assert "energy_source: estimate" in rows[0]["error"]
