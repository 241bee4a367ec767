"""A small study through `snakemake --profile profiles/slurm` on the local single-node Slurm
cluster (scripts/local_slurm.sh start): the measurement cell must run as a Slurm job, and
only it (aggregation, figures, report, matrix and the demo model are local rules)."""

import json
import re
import shutil
import subprocess
import time

import pandas as pd
import pytest
from conftest import ROOT, dry_run_jobs, run_snakemake, small_study, study_dir, write_config

SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.")


def _cluster_problem() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "Slurm client tools (sinfo, sbatch) not installed: run scripts/local_slurm.sh install"
    status = subprocess.run(["bash", str(ROOT / "scripts" / "local_slurm.sh"), "status"],
                            capture_output=True, text=True, timeout=60)
    if status.returncode != 0:
        return ("no usable Slurm cluster (`scripts/local_slurm.sh status` failed): run "
                "`scripts/local_slurm.sh start`")
    return None


_PROBLEM = _cluster_problem()
pytestmark = [pytest.mark.slurm, pytest.mark.e2e,
              pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or "")]


def sacct_states(job_ids: list[str], timeout_s: float = 30.0) -> dict[str, str]:
    """Final states from the accounting database (slurmdbd records them a moment late)."""
    deadline = time.monotonic() + timeout_s
    while True:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j",
                              ",".join(job_ids)], capture_output=True, text=True, timeout=30)
        states = dict(line.split("|", 1) for line in out.stdout.split() if "|" in line)
        done = all(states.get(j, "").split()[0:1] not in ([], ["PENDING"], ["RUNNING"])
                   for j in job_ids)
        if done or time.monotonic() > deadline:
            return states
        time.sleep(1.0)


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm")
    study = small_study(
        backends={"transformers": {"batch_size": [2], "dtype": ["float32"]}},
        # Long enough for the estimate's 10 ms resolution: a shorter cycle has no energy.
        workload={"num_prompts": 4, "input_tokens": 8, "output_tokens": 32},
        measurement={"cycles": 2, "idle_duration_s": 0.2, "warmup": {"min_runs": 1, "max_runs": 1},
                     "threads": 1, "timeout_s": 300},
    )
    config = write_config(workdir, study)
    started = time.monotonic()
    proc = run_snakemake(workdir, config, "--profile", str(ROOT / "profiles" / "slurm"),
                         timeout=600)
    return workdir, config, study, proc, time.monotonic() - started


def test_measure_cell_ran_as_a_slurm_job(slurm_run):
    workdir, _, _, proc, _ = slurm_run
    submitted = SUBMITTED.findall(proc.stderr)
    # Exactly one cluster job: the one cell. Everything else ran locally (localrules).
    assert len(submitted) == 1, proc.stderr[-4000:]
    _, slurm_id, slurm_log = submitted[0]
    assert "rule_measure" in slurm_log
    assert sacct_states([slurm_id]).get(slurm_id) == "COMPLETED"
    cell_dir, = [p.parent for p in (study_dir(workdir) / "cells").glob("*/*/*/runs.parquet")]
    provenance = json.loads((cell_dir / "provenance.json").read_text())
    assert provenance["slurm_job_id"] == slurm_id
    assert provenance["environment"]["SLURM_JOB_ID"] == slurm_id
    assert provenance["host"] and provenance["git"]["commit"]


def test_results_are_complete(slurm_run):
    workdir, _, study, _, _ = slurm_run
    runs = pd.read_parquet(next((study_dir(workdir) / "cells").glob("*/*/*/runs.parquet")))
    assert len(runs) == study["measurement"]["cycles"] and (runs["status"] == "ok").all()
    # Each cycle repeats the workload until its window is long enough.
    assert (runs["output_tokens"] == 4 * 32 * runs["repetitions"]).all()
    # Energy is positive, or absent with the reason; never a silent 0 J.
    unresolved = runs["warnings"].map(lambda ws: any("did not advance" in w for w in ws))
    assert ((runs["total_energy_j"] > 0) | (runs["total_energy_j"].isna() & unresolved)).all()
    summary = pd.read_parquet(study_dir(workdir) / "summary.parquet")
    assert list(summary["status"]) == ["ok"] and list(summary["cycles"]) == [2]
    assert (study_dir(workdir) / "report.html").stat().st_size > 1000


def test_nothing_left_to_do(slurm_run):
    workdir, config, *_ = slurm_run
    assert dry_run_jobs(workdir, config) == {}


def test_within_ci_budget(slurm_run):
    *_, elapsed_s = slurm_run
    # One Slurm job (~6-10 s of start-up) plus the local rules; generous for a loaded CI box.
    assert elapsed_s < 240, f"the Slurm study took {elapsed_s:.0f} s"
