"""Bad input refused before any job with one line naming the key (issue 15, item 8): dataset
problems that need the tokenizer (a missing field, no usable record, nothing left after the
length filters, a prompt over the context) found by the plan-time preflight
(llm_energy.execution.preflight) in `snakemake -n` and `llm-energy validate`; an output cap no
prompt can fit; union-typed keys and empty sections in one clear line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, SNAKEMAKE, small_study, write_config

from llm_energy.cli import main
from llm_energy.execution import preflight as pf
from llm_energy.study.plan import plan_from_config


def _chat(path, n, human="human"):
    """ShareGPT records; prompt i has about 2 × i + 8 tokens with the demo tokenizer. With
    `human="gpt"` no record has a human turn: nothing to send."""
    rows = [{"conversations": [
        {"from": human, "value": f"write a function number {i} " + "that sorts " * i},
        {"from": "gpt", "value": "def f(x):\n    return sorted(x)\n" * (1 + i % 3)}]}
        for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _study(tmp_path, model, dataset, backends=None, human="human", **workload):
    data = _chat(tmp_path / "chat.jsonl", 6, human)
    return small_study(
        models=[model],
        backends=backends or {"transformers": {"batch_size": [2]}},
        workload={"num_prompts": 4, "output_tokens": 8,
                  "dataset": {"path": str(data), "format": "sharegpt", **dataset}, **workload})


def _validate(capsys, config) -> tuple[int, list[str], list[str]]:
    code = main(["validate", str(config)])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


#: (dataset keys, other `_study` arguments, backends, the key the one line must name first)
BAD = {
    "missing_field": ({"format": "prompt", "prompt_field": "question"}, {}, None,
                      "workload.dataset.prompt_field: dataset "),
    "no_usable_record": ({}, {"human": "gpt"}, None, "workload.dataset.format: dataset "),
    "nothing_left_after_length_filter": ({"max_input_tokens": 3}, {}, None,
                                         "workload.dataset.max_input_tokens: dataset "),
    "prompt_over_the_context": ({}, {}, {"vllm": {"mode": ["offline"], "max_model_len": 20}},
                                "workload.dataset.max_input_tokens: record "),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_dataset_problems_refused_by_snakemake_before_any_job(tmp_path, demo_model_dir, case):
    dataset, workload, backends, key = BAD[case]
    study = _study(tmp_path, {"name": "tiny", "path": str(demo_model_dir)}, dataset, backends,
                   **workload)
    config = write_config(tmp_path, study)
    proc = subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory",
                           str(tmp_path), "--configfile", str(config), "--cores", "1", "-n"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("llm-energy:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert errors[0].startswith(f"llm-energy: config error: {key}"), errors[0]
    # No job ran, not even the workload rule: nothing built, no study folder.
    assert not (tmp_path / "resources").exists()
    assert not (tmp_path / "results").exists()
    # The validate CLI refuses it with the same line (the result cached by the dry run).
    code, _, err = _validate_in(tmp_path, config)
    assert code == 1 and err == [errors[0]]


def _validate_in(workdir, config):
    proc = subprocess.run([sys.executable, "-m", "llm_energy.cli", "validate", str(config)],
                          cwd=workdir, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout.splitlines(), proc.stderr.splitlines()


def test_prompt_over_the_context_names_the_limit(tmp_path, demo_model_dir, capsys,
                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = _study(tmp_path, {"name": "tiny", "path": str(demo_model_dir)}, {},
                   {"vllm": {"mode": ["offline"], "max_model_len": 20}})
    code, _, err = _validate(capsys, write_config(tmp_path, study))
    assert code == 1 and len(err) == 1
    assert "more than backends.vllm.max_model_len = 20; set it to drop longer prompts" in err[0]
    # Under the limit: valid, and the dataset workload says it was checked.
    study["backends"]["vllm"]["max_model_len"] = 64
    code, out, err = _validate(capsys, write_config(tmp_path, study))
    assert code == 0 and err == [] and out[-1].endswith(": checked"), out


def test_empty_dataset_refused_before_any_job(tmp_path, demo_model_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty.json"
    empty.write_text("[]\n")
    study = _study(tmp_path, {"name": "tiny", "path": str(demo_model_dir)}, {})
    study["workload"]["dataset"]["path"] = str(empty)
    code, _, err = _validate(capsys, write_config(tmp_path, study))
    assert code == 1 and len(err) == 1
    assert err[0].startswith("llm-energy: config error: workload.dataset.path: dataset ")
    assert err[0].endswith("is empty (workload of model 'tiny')")


def test_demo_model_tokenizer_trained_in_memory(tmp_path, capsys, monkeypatch):
    """A demo model not built yet: its tokenizer is trained as the demo_model rule trains it
    (same ids: the workload's hash equals the one from the built model's tokenizer)."""
    from conftest import TINY_DEMO
    from transformers import AutoTokenizer

    from llm_energy.models.demo import build_demo_model
    from llm_energy.study.config import DemoModelSpec
    from llm_energy.workload.build import make_workload

    monkeypatch.chdir(tmp_path)
    study = _study(tmp_path, {"name": "tiny", "demo": dict(TINY_DEMO)}, {"max_input_tokens": 3})
    code, _, err = _validate(capsys, write_config(tmp_path, study))
    assert code == 1 and err[0].startswith(
        "llm-energy: config error: workload.dataset.max_input_tokens: ")
    assert not (tmp_path / "resources").exists()
    plan = plan_from_config(_study(tmp_path, {"name": "tiny", "demo": dict(TINY_DEMO)}, {}))
    (key,) = plan.workloads
    source = pf.tokenizer_source(plan, "tiny")
    assert source is not None and source[0] == "demo"
    in_memory = pf.load_tokenizer(source)
    built = build_demo_model(DemoModelSpec(**TINY_DEMO), tmp_path / "built")
    spec = plan.workloads[key][0]
    assert make_workload(spec, in_memory).token_ids_sha256 == \
        make_workload(spec, AutoTokenizer.from_pretrained(built)).token_ids_sha256


def test_results_are_cached_and_refreshed_when_an_input_changes(tmp_path, demo_model_dir):
    data = _chat(tmp_path / "chat.jsonl", 6)
    study = small_study(models=[{"name": "tiny", "path": str(demo_model_dir)}],
                        workload={"num_prompts": 4, "output_tokens": 8,
                                  "dataset": {"path": str(data), "format": "sharegpt"}})
    loads = []

    def loader(source):
        loads.append(source)
        return pf.load_tokenizer(source)

    def refusing(source):
        raise AssertionError("a cached result loads no tokenizer")

    cache = tmp_path / "cache"
    (key,) = plan_from_config(study).workloads
    assert pf.preflight(plan_from_config(study), cache, loader) == {key: "checked"}
    assert pf.preflight(plan_from_config(study), cache, refusing) == {key: "cached"}
    # A cached failure is still a failure.
    study["backends"] = {"vllm": {"mode": ["offline"], "max_model_len": 20}}
    with pytest.raises(pf.ConfigError, match="max_model_len = 20"):
        pf.preflight(plan_from_config(study), cache, loader)
    with pytest.raises(pf.ConfigError, match="max_model_len = 20"):
        pf.preflight(plan_from_config(study), cache, refusing)
    # Editing the dataset (its size or mtime) checks it again.
    study["backends"] = {"transformers": {"batch_size": [2]}}
    data.write_text(data.read_text() + data.read_text().splitlines()[0] + "\n")
    assert pf.preflight(plan_from_config(study), cache, loader) == {key: "checked"}
    assert len(loads) == 3


@pytest.mark.parametrize("model", [{"name": "hub", "hub_id": "org/model"},
                                   {"name": "remote", "trust_remote_code": True}])
def test_hub_and_remote_code_models_are_left_to_the_workload_rule(tmp_path, demo_model_dir,
                                                                   model):
    """Nothing is downloaded and no model code runs while planning: the rule checks these."""
    if "hub_id" not in model:
        model = {**model, "path": str(demo_model_dir)}
    data = _chat(tmp_path / "chat.jsonl", 6)
    study = small_study(models=[model],
                        backends={"vllm": {"mode": ["offline"], "max_model_len": 20}},
                        workload={"num_prompts": 4, "output_tokens": 8,
                                  "dataset": {"path": str(data), "format": "sharegpt"}})
    plan = plan_from_config(study)
    (key,) = plan.workloads

    def refusing(source):
        raise AssertionError("no tokenizer is loaded for this model")

    assert pf.preflight(plan, tmp_path / "cache", refusing) == {key: "left to the workload rule"}
    assert not (tmp_path / "cache").exists()


def test_a_tokenizer_that_fails_to_load_is_left_to_the_workload_rule(tmp_path, demo_model_dir):
    data = _chat(tmp_path / "chat.jsonl", 6)
    study = small_study(models=[{"name": "tiny", "path": str(demo_model_dir)}],
                        workload={"num_prompts": 4, "output_tokens": 8,
                                  "dataset": {"path": str(data), "format": "sharegpt"}})
    plan = plan_from_config(study)
    (key,) = plan.workloads

    def broken(source):
        raise OSError("tokenizer.json: bad file\nsecond line")

    assert pf.preflight(plan, tmp_path / "cache", broken) == {
        key: "left to the workload rule (tokenizer: tokenizer.json: bad file)"}
    assert not (tmp_path / "cache").exists()


def test_output_cap_no_prompt_can_fit_is_refused_at_validation(tmp_path, capsys):
    """output_tokens 5000 against a 1024-token context: every request needs at least
    min_input_tokens + 5000 tokens, refused before tokenising anything."""
    study = _study(tmp_path, {"name": "tiny", "path": str(tmp_path)}, {},
                   {"vllm": {"mode": ["offline"], "max_model_len": 1024}})
    (tmp_path / "config.json").write_text("{}")
    study["workload"]["output_tokens"] = 5000
    code, _, err = _validate(capsys, write_config(tmp_path, study))
    assert code == 1 and len(err) == 1
    assert err[0] == ("llm-energy: config error: invalid value for 'workload.output_tokens': "
                      "workload.output_tokens 5000 + at least workload.dataset.min_input_tokens "
                      "= 1 prompt token(s) = 5001 exceeds backends.vllm.max_model_len = 1024; "
                      "raise max_model_len or shorten the workload")
    # 1023 + 1 fits: left to the preflight, which passes here (the longest prompt is short).
    study["workload"]["output_tokens"] = 1023
    study["workload"]["dataset"]["max_input_tokens"] = 2
    code, _, err = _validate(capsys, write_config(tmp_path, study))
    assert code == 1 and "'workload.dataset.max_input_tokens'" in err[0]
    assert "workload.dataset.max_input_tokens + workload.output_tokens = 2 + 1023" in err[0]


@pytest.mark.parametrize(("workload", "line"), [
    ({"arrival": "poisson", "request_rate_per_s": [-1]},
     "invalid value for 'workload.request_rate_per_s[0]' (got -1): Input should be greater "
     "than 0"),
    ({"arrival": "poisson", "request_rate_per_s": [2, -1]},
     "invalid value for 'workload.request_rate_per_s[1]' (got -1): Input should be greater "
     "than 0"),
    ({"arrival": "poisson", "request_rate_per_s": -1},
     "invalid value for 'workload.request_rate_per_s' (got -1): Input should be greater than 0"),
    ({"concurrency": [0]},
     "invalid value for 'workload.concurrency[0]' (got 0): Input should be greater than 0"),
    ({"concurrency": "a"},
     "invalid value for 'workload.concurrency' (got 'a'): Input should be a valid integer"),
    ({"dataset": []},
     "invalid value for 'workload.dataset': List should have at least 1 item after validation, "
     "not 0"),
    ({"dataset": [{"path": "/no/such/file.jsonl"}]},
     "invalid value for 'workload.dataset[0].path' (got '/no/such/file.jsonl'): no dataset at "
     "/no/such/file.jsonl"),
])
def test_union_keys_give_the_written_shapes_problem(tmp_path, capsys, workload, line):
    study = small_study(backends={"vllm": {"mode": ["server"]}})
    study["workload"] = {**study["workload"], **workload}
    code, _, err = _validate(capsys, write_config(tmp_path, study))
    assert code == 1 and err == [f"llm-energy: config error: {line}"]


@pytest.mark.parametrize("section", ["figures", "slo", "measurement", "references"])
def test_an_empty_section_is_refused_naming_it(tmp_path, capsys, section):
    config = tmp_path / "study.yaml"
    config.write_text(write_config(tmp_path, small_study()).read_text() + f"{section}:\n")
    code, _, err = _validate(capsys, config)
    assert code == 1 and err == [
        f"llm-energy: config error: invalid value for '{section}': the section is empty; "
        "remove the key for its default, or give its keys"]


@pytest.mark.smollm2
def test_default_study_gguf_tokenizer_read_from_the_file(tmp_path):
    """The default study's GGUF model, not converted yet: its tokenizer is read from the GGUF
    file, and a dataset filter that leaves nothing is refused by `snakemake -n`."""
    import yaml

    study = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    study["workload"]["dataset"]["path"] = str(ROOT / study["workload"]["dataset"]["path"])
    study["workload"]["dataset"]["max_input_tokens"] = 5
    config = write_config(tmp_path, study)
    proc = subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory",
                           str(tmp_path), "--configfile", str(config), "--cores", "1", "-n"],
                          capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("llm-energy:")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-3000:]
    assert errors[0].startswith("llm-energy: config error: workload.dataset.max_input_tokens: "
                                "dataset ") and "nothing left of " in errors[0]
    assert not (tmp_path / "resources").exists() and not (tmp_path / "results").exists()
    (cached,) = (tmp_path / ".snakemake" / "llm-energy" / "preflight").glob("*.json")
    assert json.loads(cached.read_text())["error"] == errors[0].removeprefix(
        "llm-energy: config error: ")
