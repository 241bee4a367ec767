import json
import os
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
from conftest import ROOT, SNAKEMAKE, VLLM_PYTHON, small_study

from llm_energy.study.config import ConfigError, json_schema, load_study, validate_study

BAD = sorted((Path(__file__).parent / "bad_configs").glob("*.yaml"))


def expected_message(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), path
    return first.removeprefix("# expect: ")


def test_default_study_is_valid():
    study = load_study(ROOT / "config" / "config.yaml")
    assert study.models[0].gguf is not None


def test_demo_study_is_valid():
    study = load_study(ROOT / "config" / "examples" / "cpu-demo.yaml")
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
                                  "huge_retries", "empty_hub_id", "malformed_hub_id",
                                  "context_over_vllm_max_model_len",
                                  "context_over_tensorrt_max_seq_len",
                                  "context_over_demo_positions",
                                  "unknown_vllm_quantization_on_cpu"])
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


def test_config_overrides_without_a_study_file_say_where_the_study_comes_from():
    from llm_energy.study.plan import plan_from_config

    with pytest.raises(ConfigError) as info:
        plan_from_config({"name": "x"}, str(ROOT))
    assert str(info.value) == (
        "missing key 'models': it is required (see config/README.md) (and 1 more problem(s)); "
        "give the study file with --configfile FILE (--config KEY=VALUE alone is not read on "
        "top of the default, config/config.yaml)")
    # A study file that lacks the key: the file is the problem, no hint about --configfile.
    with pytest.raises(ConfigError) as info:
        plan_from_config({"name": "x", "models": []}, str(ROOT), ["study.yaml"])
    assert "--configfile" not in str(info.value)
    # Every required key given: other errors carry no hint either.
    with pytest.raises(ConfigError) as info:
        plan_from_config(small_study(measurement={"cycles": 0}), str(ROOT))
    assert "--configfile" not in str(info.value)


def test_snakemake_config_without_configfile_hints_at_configfile(tmp_path):
    proc = subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                           "--cores", "1", "-n", "--config", "name=x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("llm-energy:")]
    assert len(errors) == 1 and "missing key 'models'" in errors[0]
    assert "--configfile FILE" in errors[0] and "config/config.yaml" in errors[0]


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
    from llm_energy.backends import registry
    from llm_energy.study import config as c

    backend_configs = [spec.config for spec in registry.specs().values()]
    for model in (c.StudyConfig, c.ModelConfig, c.DemoModelSpec, c.GgufModelSpec,
                  *backend_configs,
                  c.WorkloadConfig, c.MeasurementConfig, c.WarmupConfig, c.CarbonConfig):
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


# ------------------------------------------------------------------ strict types


def _scalar_field(annotation):
    """(int, float or bool, whether a list of them) for a field typed as one (optional, with
    constraints, or a sweep axis of them); None for other fields."""
    axis = False
    for _ in range(4):
        if typing.get_origin(annotation) is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif typing.get_origin(annotation) in (typing.Union, types.UnionType):
            others = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(others) != 1:
                return None
            annotation = others[0]
        elif typing.get_origin(annotation) is list and not axis:
            axis, annotation = True, typing.get_args(annotation)[0]
    return (annotation, axis) if annotation in (int, float, bool) else None


def _config_models():
    from pydantic import BaseModel

    from llm_energy.backends import registry
    from llm_energy.study import config as c
    from llm_energy.study import sections, workload_spec

    found = {m for module in (c, sections, workload_spec) for m in vars(module).values()
             if isinstance(m, type) and issubclass(m, BaseModel)
             and m.__module__.startswith("llm_energy.study")}
    return sorted(found | {s.config for s in registry.specs().values()},
                  key=lambda m: m.__name__)


#: Values YAML gives typed that lax validation would turn into another type.
COERCIBLE = {int: [True, "3", 3.0], float: [True, "1.5"], bool: [1, "true", "yes"]}
TYPE_ERRORS = {int: "int_type", float: "float_type", bool: "bool_type"}


def test_every_number_and_switch_of_every_section_refuses_other_types():
    """`retries: true`, `timeout_s: "1800"`, `enforce_eager: 1`: each one an error at its key,
    in every section and every backend's settings (lax pydantic would take them)."""
    checked = 0
    for model in _config_models():
        for name, field in model.model_fields.items():
            kind = _scalar_field(field.annotation)
            if kind is None:
                continue
            scalar, axis = kind
            for bad in COERCIBLE[scalar]:
                with pytest.raises(Exception) as info:
                    model.model_validate({field.alias or name: [bad] if axis else bad})
                where = (name, 0) if axis else (name,)
                assert any(e["loc"][:len(where)] == where and e["type"] == TYPE_ERRORS[scalar]
                           for e in info.value.errors()), (model.__name__, name, bad)
                checked += 1
    assert checked > 150


def test_yaml_integers_are_still_floats():
    study = validate_study(small_study(
        backends={"vllm": {"gpu_memory_utilization": 1}},
        workload={"num_prompts": 4, "input_tokens": 8, "output_tokens": 8, "arrival": "poisson",
                  "request_rate_per_s": 2, "request_timeout_s": 60},
        measurement={"idle_duration_s": 2, "timeout_s": 1800, "warmup": {"cv_threshold": 1}},
        carbon={"pue": 2}, slo={"ttft_ms": 100}))
    values = [study.backends.vllm.gpu_memory_utilization, study.workload.request_rate_per_s,
              study.workload.request_timeout_s, study.measurement.idle_duration_s,
              study.measurement.timeout_s, study.measurement.warmup.cv_threshold,
              study.carbon.pue, study.slo.ttft_ms]
    assert values == [1.0, 2.0, 60.0, 2.0, 1800.0, 1.0, 2.0, 100.0]
    assert all(type(v) is float for v in values)


# ------------------------------------------------------------------ limits known before any job


def test_context_over_a_local_models_config_json_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama",
                                                      "max_position_embeddings": 48}))
    study = small_study(models=[{"name": "local", "path": str(tmp_path)}],
                        workload={"num_prompts": 4, "input_tokens": 40, "output_tokens": 16})
    with pytest.raises(ConfigError) as info:
        validate_study(study)
    assert f"exceeds {tmp_path / 'config.json'} 'max_position_embeddings' = 48" in str(info.value)
    assert "workload.input_tokens" in str(info.value) and "\n" not in str(info.value)
    study["workload"] = {**study["workload"], "input_tokens": 16, "output_tokens": 32}
    assert validate_study(study).models[0].context_limit()[0] == 48  # 48 tokens fit


def test_context_limits_are_inclusive_and_per_backend():
    ok = small_study(backends={"vllm": {"max_model_len": 24}},
                     workload={"num_prompts": 4, "input_tokens": 16, "output_tokens": 8})
    assert validate_study(ok).backends.enabled()["vllm"].max_model_len == 24
    with pytest.raises(ConfigError, match="= 25 exceeds backends.vllm.max_model_len = 24"):
        validate_study({**ok, "workload": {**ok["workload"], "input_tokens": 17}})
    # A disabled backend's limit does not apply.
    disabled = {**ok, "backends": {"transformers": {"batch_size": [1]},
                                   "vllm": {"max_model_len": 8, "enabled": False}}}
    assert "vllm" not in validate_study(disabled).backends.enabled()


def test_unknown_quantization_is_refused_even_where_the_cell_would_be_pruned():
    study = small_study(backends={"vllm": {"quantization": ["fp8"]}})
    assert validate_study(study)  # known to vLLM; pruned on CPU, not refused
    with pytest.raises(ConfigError, match="'backends.vllm.quantization'.*'awqq'.*not known"):
        validate_study(small_study(backends={"vllm": {"quantization": ["awqq"]}}))


@pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="no .venvs/vllm")
def test_vllm_quantization_names_come_from_the_installed_vllm():
    """Where vLLM is installed, its own list is read (from its source, without importing it)
    and equals what vLLM itself exports."""
    code = ("import json; from llm_energy.backends.vllm_spec import quantization_methods as q; "
            "from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS as v; "
            "print(json.dumps([list(q()), list(v)]))")
    proc = subprocess.run([str(VLLM_PYTHON), "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    ours, theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert ours == theirs and "awq" in ours
