import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SNAKEMAKE, small_study

from llm_energy.study.config import ConfigError, json_schema, load_study, validate_study

BAD = sorted((Path(__file__).parent / "bad_configs").glob("*.yaml"))


def expected_message(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), path
    return first.removeprefix("# expect: ")


def test_default_study_is_valid():
    study = load_study(ROOT / "config" / "config.yaml")
    assert study.models[0].demo is not None


def test_corpus_is_large_enough():
    assert len(BAD) >= 30


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_config_rejected_with_one_clear_line(path):
    with pytest.raises(ConfigError) as info:
        load_study(path)
    message = str(info.value)
    assert expected_message(path) in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["malformed_yaml", "unknown_top_key", "string_batch_size",
                                  "negative_batch_size", "unknown_backend", "top_level_list",
                                  "inf_idle_duration", "inf_timeout", "inf_cpu_power",
                                  "huge_retries", "empty_hub_id", "malformed_hub_id"])
def test_cli_rejects_without_traceback(name):
    path = ROOT / "tests" / "bad_configs" / f"{name}.yaml"
    proc = subprocess.run([sys.executable, "-m", "llm_energy.cli", "validate", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected_message(path) in lines[0]


@pytest.mark.parametrize("name", ["unknown_top_key", "string_batch_size", "negative_batch_size",
                                  "unknown_backend", "duplicate_models",
                                  # Once an OverflowError traceback from the Snakefile.
                                  "inf_timeout"])
def test_snakemake_rejects_before_any_job(tmp_path, name):
    path = ROOT / "tests" / "bad_configs" / f"{name}.yaml"
    proc = subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                           "--configfile", str(path), "--cores", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines()
              if line.startswith("llm-energy: config error")]
    assert len(errors) == 1 and expected_message(path) in errors[0]
    assert not (tmp_path / "results").exists()


def test_snakemake_reports_malformed_yaml(tmp_path):
    path = ROOT / "tests" / "bad_configs" / "malformed_yaml.yaml"
    proc = subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                           "--configfile", str(path), "--cores", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "not valid JSON or YAML" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_scalar_becomes_one_value_axis():
    study = validate_study(small_study(backends={"transformers": {"batch_size": 8}}))
    assert study.backends.transformers.batch_size == [8]


def test_schema_file_is_current():
    on_disk = json.loads((ROOT / "workflow" / "schemas" / "config.schema.json").read_text())
    assert on_disk == json_schema(), "run `make schema` to regenerate workflow/schemas/"


def test_config_readme_documents_every_key():
    readme = (ROOT / "config" / "README.md").read_text()
    from llm_energy.study import config as c

    for model in (c.StudyConfig, c.ModelConfig, c.DemoModelSpec, c.TransformersConfig,
                  c.VllmConfig, c.WorkloadConfig, c.MeasurementConfig, c.WarmupConfig,
                  c.CarbonConfig):
        for name in model.model_fields:
            assert f"`{name}`" in readme or f".{name}`" in readme, f"{model.__name__}.{name}"


def test_trust_remote_code_off_by_default(tmp_path):
    study = validate_study(small_study())
    assert study.models[0].trust_remote_code is False


@pytest.mark.parametrize("hub_id", ["meta-llama/Llama-3.1-8B-Instruct", "gpt2",
                                    "HuggingFaceTB/SmolLM2-135M-Instruct", "Qwen/Qwen2.5-0.5B",
                                    "a_b/c.d-e"])
def test_hub_ids_the_hub_accepts_are_valid(hub_id):
    study = validate_study(small_study(models=[{"name": "m", "hub_id": hub_id}]))
    assert study.models[0].hub_id == hub_id


@pytest.mark.parametrize("hub_id", ["", " ", "org/", "/name", "org/name/extra", "org//name",
                                    "-org/name", "org/name.", "org/na--me", "org/na..me",
                                    "org/name.git", "org/na me", "org/námé", "o" * 97])
def test_hub_ids_the_hub_refuses_are_refused_in_one_line(hub_id):
    with pytest.raises(ConfigError) as info:
        validate_study(small_study(models=[{"name": "m", "hub_id": hub_id}]))
    assert str(info.value).startswith("invalid value for 'models[m].hub_id'")
    assert "not a hub repository id" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("key", ["measurement.idle_duration_s", "measurement.cooldown_s",
                                 "measurement.cpu_power_per_core_w", "measurement.timeout_s",
                                 "measurement.idle_cache_ttl_s", "measurement.warmup.cv_threshold",
                                 "workload.request_timeout_s", "carbon.pue",
                                 "backends.vllm.gpu_memory_utilization"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_floats_are_refused_naming_the_key(key, value):
    study = small_study(backends={"transformers": {"batch_size": [1]}, "vllm": {}})
    node = study
    *path, last = key.split(".")
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value
    with pytest.raises(ConfigError) as info:
        validate_study(study)
    assert f"'{key}'" in str(info.value) and "\n" not in str(info.value)
