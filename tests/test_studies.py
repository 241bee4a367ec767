"""One results folder per study (results/<study name>/), the index of studies, and the rule
that keeps two config files from sharing a study name (llm_energy.study.layout)."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, SNAKEMAKE, run_snakemake, small_study, study_dir, write_config

from llm_energy.analysis.export import task_file
from llm_energy.study.config import ConfigError, validate_study
from llm_energy.study.layout import (
    check_owner,
    config_hash,
    study_record,
    summary_path,
    write_index,
    write_record,
)
from llm_energy.study.matrix import expand

LLM_ENERGY = str(Path(sys.executable).with_name("llm-energy"))


def _claim(root: Path, study, config_file: str) -> None:
    write_record(study_record(study.name, _cells(study), config_file),
                 root / study.name / "study.json")


def _cells(study) -> list[str]:
    return [c.cell_id for c in expand(study)[0]]


def test_config_hash_is_what_the_study_measures():
    a = validate_study(small_study())
    spelled_out = small_study()
    spelled_out["workload"] = {**spelled_out["workload"], "seed": 0}  # the default, written
    operational = small_study()
    operational["measurement"] = {**operational["measurement"], "timeout_s": 77}
    carbon = small_study(carbon={"pue": 1.2})
    for same in (spelled_out, operational, carbon):
        assert config_hash(_cells(a)) == config_hash(_cells(validate_study(same)))
    other = small_study(workload={"num_prompts": 5, "input_tokens": 16, "output_tokens": 8})
    assert config_hash(_cells(a)) != config_hash(_cells(validate_study(other)))


def test_same_file_may_change_its_study(tmp_path):
    study = validate_study(small_study())
    _claim(tmp_path, study, "/studies/a.yaml")
    edited = validate_study(small_study(workload={"num_prompts": 9, "input_tokens": 16,
                                                  "output_tokens": 8}))
    check_owner("test", _cells(edited), "/studies/a.yaml", tmp_path)  # no error


def test_another_file_with_the_same_cells_is_the_same_study(tmp_path):
    study = validate_study(small_study())
    _claim(tmp_path, study, "/studies/a.yaml")
    check_owner("test", _cells(study), "/elsewhere/copy-of-a.yaml", tmp_path)  # no error


def test_another_file_reusing_the_name_is_refused_naming_the_key(tmp_path):
    _claim(tmp_path, validate_study(small_study()), "/studies/a.yaml")
    other = validate_study(small_study(backends={"transformers": {"batch_size": [8]}}))
    with pytest.raises(ConfigError) as exc:
        check_owner("test", _cells(other), "/studies/b.yaml", tmp_path)
    message = str(exc.value)
    assert "\n" not in message and message.startswith("invalid value for 'name' (got 'test')")
    assert "/studies/a.yaml" in message


def test_index_lists_the_study_folders_present(tmp_path):
    for name in ("b", "a"):
        _claim(tmp_path, validate_study(small_study(name=name)), f"/studies/{name}.yaml")
    (tmp_path / "not-a-study").mkdir()
    index = write_index(tmp_path)
    assert [s["name"] for s in index["studies"]] == ["a", "b"]
    assert json.loads((tmp_path / "index.json").read_text()) == index
    entry = index["studies"][0]
    assert entry["paths"]["report"] == f"{tmp_path.as_posix()}/a/report.html"
    assert entry["config_file"] == "/studies/a.yaml" and len(entry["config_hash"]) == 16
    # Rebuilt, not edited: a deleted folder leaves the index at the next write.
    (tmp_path / "b" / "study.json").unlink()
    assert [s["name"] for s in write_index(tmp_path)["studies"]] == ["a"]
    assert not list(tmp_path.glob(".index.json.*"))  # no temporary file left behind


def test_summary_path_accepts_file_folder_or_name(tmp_path):
    folder = tmp_path / "results" / "a"
    folder.mkdir(parents=True)
    (folder / "summary.parquet").write_bytes(b"x")
    assert summary_path(folder / "summary.parquet") == folder / "summary.parquet"
    assert summary_path(folder) == folder / "summary.parquet"
    assert summary_path("a", tmp_path / "results") == folder / "summary.parquet"
    with pytest.raises(FileNotFoundError):
        summary_path("b", tmp_path / "results")


def _tiny(name: str, batch_size: int) -> dict:
    return small_study(name=name, backends={"transformers": {"batch_size": [batch_size],
                                                             "dtype": ["float32"]}},
                       workload={"num_prompts": 2, "input_tokens": 8, "output_tokens": 4})


@pytest.mark.e2e
def test_two_studies_keep_their_own_results(tmp_path):
    """Two studies run one after the other in one working directory: each keeps its results,
    report and export; the index lists both; a third file reusing a name is refused; the
    owner file may still be edited."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config_a = write_config(tmp_path / "a", _tiny("alpha", 2))
    config_b = write_config(tmp_path / "b", _tiny("beta", 3))
    run_snakemake(tmp_path, config_a, timeout=600)
    report_a = (study_dir(tmp_path, "alpha") / "report.html").read_bytes()
    run_snakemake(tmp_path, config_b, timeout=600)

    for name, batch_size in (("alpha", 2), ("beta", 3)):
        folder = study_dir(tmp_path, name)
        summary = pd.read_parquet(folder / "summary.parquet")
        assert list(summary["batch_size"]) == [batch_size]
        assert (folder / "matrix.csv").is_file() and (folder / "summary.csv").is_file()
        assert f"llm-energy study: {name}" in (folder / "report.html").read_text()
        other = {"alpha": "beta", "beta": "alpha"}[name]
        export = (folder / "mlenergy" / "index.json").read_text()
        assert name in export and other not in export
        assert (folder / "mlenergy" / task_file(name)).is_file()
        assert len(list((folder / "cells").glob("*/*/*/runs.parquet"))) == 1
        assert list((folder / "logs").glob("*.log"))
    # The second study did not touch the first one's report.
    assert (study_dir(tmp_path, "alpha") / "report.html").read_bytes() == report_a
    index = json.loads((tmp_path / "results" / "index.json").read_text())
    assert {s["name"]: s["config_file"] for s in index["studies"]} == {
        "alpha": str(config_a.resolve()), "beta": str(config_b.resolve())}
    # Nothing else at the top but the idle-baseline cache, which is per host, not per study.
    assert not [p for p in (tmp_path / "results").iterdir()
                if p.name not in ("alpha", "beta", "index.json", ".idle-cache")]

    # A third file reusing `alpha` for other content is refused before any job.
    (tmp_path / "c").mkdir()
    config_c = write_config(tmp_path / "c", _tiny("alpha", 4))
    proc = run_snakemake(tmp_path, config_c, "-n", check=False, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("llm-energy:")]
    assert proc.returncode == 1 and len(errors) == 1 and "'name'" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert subprocess.run([LLM_ENERGY, "validate", str(config_c)], cwd=tmp_path,
                          capture_output=True, text=True).returncode == 1
    # ... while alpha's own file may change: a dry run plans the new cell.
    write_config(tmp_path / "a", _tiny("alpha", 4))
    proc = run_snakemake(tmp_path, config_a, "-n", timeout=120)
    assert "measure" in proc.stdout

    # Running from another directory: the Snakefile by path, the study folder by --directory
    # (run_snakemake does both); `compare` finds studies by name.
    proc = subprocess.run([LLM_ENERGY, "compare", "alpha", "beta", "--on", "settings"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_snakemake_lint_from_another_directory(tmp_path):
    """The workflow lints clean (`snakemake --lint` exits 1 on any lint), run by path."""
    proc = subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory",
                           str(tmp_path), "--lint"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
