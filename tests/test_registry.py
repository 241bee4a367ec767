"""The backend registry: a backend is added by registration alone, and no module outside
`backends/` names a backend or one of its settings."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import (
    ROOT,
    SNAKEMAKE,
    dry_run_jobs,
    run_snakemake,
    small_study,
    study_dir,
    write_config,
)

from llm_energy.backends import registry

TESTS_DIR = Path(__file__).resolve().parent
TOY = "fakes.toy_backend"


@pytest.fixture
def toy_env(monkeypatch):
    """The toy backend registered in this process and in every process it starts."""
    monkeypatch.setenv(registry.EXTRA_BACKENDS_ENV, TOY)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [str(TESTS_DIR), str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")


# ------------------------------------------------------------------ registration


def test_toy_backend_is_registered_from_the_test_directory(toy_env):
    spec = registry.get("toy")
    assert spec.config.__module__ == TOY and spec.batch_setting == "slots"
    assert {"transformers", "vllm", "toy"} <= set(registry.names())


def test_unregistered_backend_is_refused_with_the_known_names(monkeypatch):
    monkeypatch.delenv(registry.EXTRA_BACKENDS_ENV, raising=False)
    from llm_energy.study.config import ConfigError, validate_study

    with pytest.raises(ConfigError, match="unknown key 'backends.toy'.*transformers"):
        validate_study(small_study(backends={"toy": {"slots": [1]}}))


def test_toy_config_is_validated_by_its_own_class(toy_env):
    from llm_energy.study.config import ConfigError, validate_study

    with pytest.raises(ConfigError, match="backends.toy.slots"):
        validate_study(small_study(backends={"toy": {"slots": [0]}}))
    with pytest.raises(ConfigError, match="unknown key 'backends.toy.batch_size'"):
        validate_study(small_study(backends={"toy": {"batch_size": [1]}}))


def test_toy_matrix_and_pruning_come_from_its_spec(toy_env):
    from llm_energy.study.config import validate_study
    from llm_energy.study.matrix import expand
    from llm_energy.study.plan import Plan

    study = validate_study(small_study(backends={"toy": {"slots": [1, 2, 128]}}))
    cells, pruned = expand(study)
    assert sorted(c.settings["slots"] for c in cells) == [1, 2]
    assert [p.reason for p in pruned] == ["the toy backend does not take more than 64 slots"]
    plan = Plan(study, {c.cell_id: c for c in cells}, pruned)
    assert plan.mem_mb("tiny", "toy") == 2048  # 2 x weights (tiny) + the spec's 1024 MiB


def test_extra_implementation_of_a_registered_backend_keeps_its_spec(monkeypatch):
    monkeypatch.setenv(registry.EXTRA_BACKENDS_ENV,
                       "transformers=fakes.faulty_backend:FaultyBackend")
    spec = registry.get("transformers")
    assert spec.implementation == "fakes.faulty_backend:FaultyBackend"
    assert spec.batch_setting == "batch_size" and spec.conda_env


def test_malformed_extra_backend_is_refused(monkeypatch):
    monkeypatch.setenv(registry.EXTRA_BACKENDS_ENV, "nosuch=fakes.toy_backend:ToyBackend")
    with pytest.raises(ValueError, match="registered name"):
        registry.specs()


BROKEN_MODULE = "raise RuntimeError('engine missing\\nsecond line')\n"


@pytest.mark.parametrize("extra,problem", [
    ("fakes.no_such_module", "module 'fakes.no_such_module' does not import "
                             "(ModuleNotFoundError: No module named 'fakes.no_such_module')"),
    ("broken_spec", "module 'broken_spec' does not import "
                    "(RuntimeError: engine missing second line)"),
    ("json", "module 'json' must define SPEC = BackendSpec(...); it has none"),
    ("fakes.toy_backend:ToyConfig", "module 'fakes.toy_backend' must define "
                                    "ToyConfig = BackendSpec(...); it is the class ToyConfig"),
])
def test_bad_extra_backend_is_one_config_error_line(monkeypatch, tmp_path, extra, problem):
    from llm_energy.study.config import ConfigError, validate_study

    (tmp_path / "broken_spec.py").write_text(BROKEN_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    monkeypatch.setenv(registry.EXTRA_BACKENDS_ENV, extra)
    with pytest.raises(ConfigError) as caught:
        validate_study(small_study())
    assert str(caught.value) == f"{registry.EXTRA_BACKENDS_ENV}: {extra!r}: {problem}"


def _fresh_env(extra: str) -> dict[str, str]:
    return {**os.environ, registry.EXTRA_BACKENDS_ENV: extra,
            "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(ROOT / "src")])}


def test_bad_extra_backend_fails_validate_in_one_line(tmp_path):
    """In a fresh process (the registry is read when the study is validated, not when the
    config module is imported): `llm-energy validate` prints one line, no traceback."""
    config = write_config(tmp_path, small_study())
    proc = subprocess.run([sys.executable, "-m", "llm_energy.cli", "validate", str(config),
                           "--results", str(tmp_path / "results")], capture_output=True,
                          text=True, env=_fresh_env("fakes.no_such_module"), timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"llm-energy: config error: {registry.EXTRA_BACKENDS_ENV}: 'fakes.no_such_module': "
        "module 'fakes.no_such_module' does not import (ModuleNotFoundError: No module named "
        "'fakes.no_such_module')"]


def test_bad_extra_backend_stops_snakemake_before_any_job(tmp_path):
    config = write_config(tmp_path, small_study())
    proc = subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory",
                           str(tmp_path), "--configfile", str(config), "--cores", "1", "-n"],
                          capture_output=True, text=True, env=_fresh_env("json"), timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert (f"llm-energy: config error: {registry.EXTRA_BACKENDS_ENV}: 'json': module 'json' "
            "must define SPEC = BackendSpec(...); it has none") in proc.stderr.splitlines()
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------ the whole pipeline


@pytest.mark.e2e
def test_toy_backend_runs_through_the_whole_pipeline(toy_env, tmp_path):
    """matrix -> measure -> summary -> figures -> report -> export with a real snakemake run:
    its cells are measured by its own rule, its batch axis is on the batch figure and in the
    export's `max_num_seqs`."""
    study = small_study(backends={"toy": {"slots": [1, 2], "step_ms": 15.0}})
    config = write_config(tmp_path, study)
    proc = run_snakemake(tmp_path, config)
    assert "measure_toy" in proc.stdout + proc.stderr
    results = study_dir(tmp_path)

    matrix = pd.read_csv(results / "matrix.csv")
    assert list(matrix["backend"]) == ["toy", "toy"] and sorted(matrix["slots"]) == [1, 2]
    summary = pd.read_parquet(results / "summary.parquet")
    assert (summary["status"] == "ok").all(), summary[["status", "error"]]
    assert sorted(summary["slots"]) == [1, 2]
    # Two slots decode two requests per step: more throughput than one.
    by_slots = summary.set_index("slots")
    assert by_slots.loc[2, "output_tokens_per_s"] > 1.3 * by_slots.loc[1, "output_tokens_per_s"]

    from llm_energy.analysis.figures import batch_column

    assert sorted(batch_column(summary)) == [1, 2]
    svg = (results / "figures" / "energy_throughput_vs_batch.svg").read_text()
    assert "no successful cells with a batch size" not in svg

    html = (results / "report.html").read_text()
    for cell_id in summary["cell_id"]:
        assert cell_id in html
    from llm_energy.analysis.export import SIDECAR, task_file

    document = json.loads((results / "mlenergy" / task_file("test")).read_text())
    sidecar = json.loads((results / "mlenergy" / SIDECAR).read_text())
    # Stable cells go to the app's task file, the others (short toy windows) to the sidecar,
    # each with its full configuration.
    exported = {c["llm_energy"]["cell_id"]: c for c in [
        *document["configurations"], *(e["configuration"] for e in sidecar["left_out"])]}
    assert {exported[r.cell_id]["max_num_seqs"] for r in summary.itertuples()} == {1, 2}
    for row in summary.itertuples():
        assert exported[row.cell_id]["max_num_seqs"] == row.slots
    provenance = json.loads(next(results.glob("cells/tiny/toy/*/provenance.json")).read_text())
    assert provenance["cell_config"]["settings"] == {"slots": provenance["cell_config"]["settings"]
                                                     ["slots"], "step_ms": 15.0}
    assert provenance["requirements_lock"] == {"file": None, "sha256": None}
    assert dry_run_jobs(tmp_path, config) == {}


# ------------------------------------------------------------------ nothing outside backends/

#: Words that are settings of a backend but also plain words of the pipeline's own vocabulary
#: (a study's precision, a backend on/off switch, how a backend runs). They are the same
#: concept for every backend, so the pipeline may name them; a setting of one backend only
#: (a batch limit, a context limit, an engine knob) may not.
GENERIC_SETTINGS = {"enabled", "dtype", "mode"}

#: The only allowed exceptions, (module, name): the same spelling as a backend's setting, but
#: another schema's term, written whatever the backend.
ALLOWED = {
    # ML.ENERGY's term for a batch limit, whatever the engine: the leaderboard's field names,
    # which the export writes for every backend, and the RequestTracker rule's parameter.
    ("analysis/export.py", "max_num_seqs"), ("analysis/export.py", "max_num_batched_tokens"),
    ("measure/mlenergy.py", "max_num_seqs"), ("measure/rows.py", "max_num_seqs"),
    # The same field read back: leaderboard files merged, leaderboard/benchmark files read as
    # references.
    ("analysis/export_merge.py", "max_num_seqs"), ("analysis/reference.py", "max_num_seqs"),
    # The engine ML.ENERGY's benchmark serves every model with (a fact about the peer's data:
    # its reference rows carry that engine's settings).
    ("analysis/reference.py", "vllm"),
    # The OpenAI API client's endpoint (any server: vLLM's, SGLang's, an external one).
    ("loadgen/client.py", "base_url"),
    # A key of Hugging Face config.json files (MPT's position limit), not TensorRT-LLM's.
    ("study/base.py", "max_seq_len"),
    # The tokenizer library of the pipeline's environment (whose version keys the plan-time
    # preflight's cache), not the backend.
    ("execution/preflight.py", "transformers"),
}


def _names_in(source: str) -> list[tuple[int, str]]:
    """String constants (whole strings, and words of f-string parts) and identifiers (names,
    attributes, keywords, function arguments) of a module, with their lines. Docstrings and
    comments are prose and left out."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                       ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docstrings:
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.Name):
            found.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute):
            found.append((node.lineno, node.attr))
        elif isinstance(node, ast.keyword) and node.arg:
            found.append((node.value.lineno, node.arg))
        elif isinstance(node, ast.arg):
            found.append((node.lineno, node.arg))
    return found


def test_no_module_outside_backends_names_a_backend_or_its_settings(toy_env):
    specs = registry.specs().values()
    backend_names = {s.name for s in specs} | {s.field_name for s in specs}
    settings = {n for s in specs for n in s.setting_names()} - GENERIC_SETTINGS
    forbidden = backend_names | settings
    hits = []
    for path in sorted((ROOT / "src" / "llm_energy").rglob("*.py")):
        if "backends" in path.relative_to(ROOT / "src" / "llm_energy").parts:
            continue
        module = path.relative_to(ROOT / "src" / "llm_energy").as_posix()
        for line, value in _names_in(path.read_text()):
            if value in forbidden and (module, value) not in ALLOWED:
                hits.append(f"{path.relative_to(ROOT)}:{line}: {value!r}")
    assert not hits, "\n".join(hits)


def test_the_scan_finds_what_it_looks_for():
    """The scanner sees quoted names, attributes and keywords (so the test above can fail)."""
    code = 'x = row.get("max_batch_size")\ny = study.backends.vllm\nf(max_model_len=3)\n'
    assert {v for _, v in _names_in(code)} >= {"max_batch_size", "vllm", "max_model_len"}


# ------------------------------------------------------------------ Snakemake rules and images


def test_one_lint_clean_measure_rule_per_backend(tmp_path):
    """The measure rules are generated from the registry, one per backend, each with its
    conda env file and container image, so `snakemake --lint` has nothing to say on them."""
    import subprocess

    from conftest import SNAKEMAKE

    study = small_study(backends={"transformers": {"batch_size": [1]},
                                  "vllm": {"max_num_seqs": [2]}})
    config = write_config(tmp_path, study)
    jobs = run_snakemake(tmp_path, config, "-n", "--quiet", "rules").stdout
    assert "measure_transformers" in jobs and "measure_vllm" in jobs
    lint = subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                           "--configfile", str(config), "--lint"], capture_output=True, text=True,
                          timeout=300)
    text = lint.stdout + lint.stderr
    assert "Congratulations" in text or "Lints for rule" in text  # the lint ran
    assert "Lints for rule measure" not in text, text


@pytest.mark.parametrize("backend,base", [("vllm", "FROM vllm/vllm-openai:"),
                                          ("tensorrt-llm", "FROM nvcr.io/nvidia/tensorrt-llm/"),
                                          ("transformers", "FROM python:3.11")])
def test_container_definitions_start_from_the_official_image(backend, base):
    spec = registry.get(backend)
    dockerfile = (ROOT / spec.container).read_text()
    assert base in dockerfile
    assert "pip install --no-cache-dir --no-deps ." in dockerfile  # adds this package
    assert spec.container_image.endswith(".sif")
