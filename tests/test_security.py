"""Security: config values never reach a shell, remote code runs only when a model turns
`trust_remote_code` on, secrets in the environment stay out of provenance and logs, servers
listen on 127.0.0.1 only.

The end-to-end test runs the real pipeline on a model directory whose path is full of shell
syntax (`; rm -rf`, `$(...)`, backticks, pipes), with model code that leaves a trace when it
is executed, and with secrets in the environment."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SNAKEMAKE, small_study, study_dir, write_config

from llm_energy.execution import runner
from llm_energy.study.config import ConfigError, validate_study
from llm_energy.study.plan import plan_from_config

EVIL = "m; touch PWNED_1 && rm -rf victim | touch PWNED_2 $(touch PWNED_3) `touch PWNED_4` 'x\" #"
SECRETS = {"HF_TOKEN": "hf_SECRETtoken0123456789", "HUGGING_FACE_HUB_TOKEN": "hf_SECRETother42",
           "AWS_SECRET_ACCESS_KEY": "aws/SECRET+key/9876543210", "OPENAI_API_KEY": "sk-SECRET-abcdef0123",
           "WANDB_API_KEY": "SECRETwandb31337"}

CANARY_CODE = '''
import json, os, sys
from pathlib import Path

from transformers import LlamaForCausalLM

# Executed only if the loader runs the model directory's own code.
_out = Path(os.environ["LLM_ENERGY_TEST_CANARY_DIR"])
_out.mkdir(parents=True, exist_ok=True)
(_out / f"remote-code-ran-{os.getpid()}.json").write_text(json.dumps(sys.argv))


class CanaryForCausalLM(LlamaForCausalLM):
    pass
'''


def no_shell_traces(*directories: Path) -> None:
    for directory in directories:
        assert not list(directory.rglob("PWNED_*")), directory
    for directory in directories:
        assert (directory / "victim" / "keep.txt").exists()


# ------------------------------------------------------------------ static guards


def test_rules_run_scripts_not_shell_commands():
    """A `shell:` or `run:` directive could interpolate config values into a command line."""
    for path in [ROOT / "Snakefile", *(ROOT / "workflow" / "rules").glob("*.smk")]:
        directives = re.findall(r"^\s*(shell|run|script|notebook|wrapper)\s*:", path.read_text(), re.M)
        assert set(directives) <= {"script"}, (path, directives)


def test_no_shell_in_python_sources():
    pattern = re.compile(r"shell\s*=\s*True|os\.system\(|os\.popen\(|commands\.getoutput")
    for path in [*(ROOT / "src").rglob("*.py"), *(ROOT / "scripts").glob("*.py")]:
        assert not pattern.search(path.read_text()), path


def test_servers_bind_loopback_only():
    from llm_energy.backends import vllm_server

    sources = "".join(p.read_text() for p in (ROOT / "src").rglob("*.py"))
    assert "0.0.0.0" not in sources and "'::'" not in sources
    command = vllm_server.server_command("python", {"model": "m", "trust_remote_code": False}, 8000)
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert "--no-trust-remote-code" in command


def test_model_name_with_shell_syntax_is_rejected():
    study = small_study()
    study["models"][0]["name"] = "tiny; rm -rf ~"
    with pytest.raises(ConfigError, match=r"models\[tiny; rm -rf ~\]\.name"):
        validate_study(study)


# ------------------------------------------------------------------ trust_remote_code


def _cell(study: dict) -> dict:
    plan = plan_from_config(study)
    return plan.cell_params(next(iter(plan.cells)))


@pytest.mark.parametrize("backend", ["transformers", "vllm"])
def test_trust_remote_code_reaches_backends_off_unless_turned_on(backend, tmp_path):
    from llm_energy.measure.protocol import CellRunner
    from llm_energy.telemetry.meters import EstimateMeter

    backends = {"transformers": {"batch_size": [1]}} if backend == "transformers" else \
        {"vllm": {"max_num_seqs": [1]}}
    for turned_on in (False, True):
        study = small_study(backends=backends)
        if turned_on:
            study["models"][0]["trust_remote_code"] = True
        made = CellRunner(_cell(study), str(tmp_path), meter=EstimateMeter(10.0))._make_backend()
        assert made.settings["trust_remote_code"] is turned_on
        if backend == "vllm":
            from llm_energy.backends.vllm_backend import engine_kwargs

            assert engine_kwargs(tmp_path, made.settings, "cuda")["trust_remote_code"] is turned_on


# ------------------------------------------------------------------ runner argv


def test_runner_passes_config_values_as_single_arguments(tmp_path, monkeypatch):
    """The measuring interpreter is replaced by a script that records its argv: the model
    path arrives as one argument, byte for byte, and nothing of it is executed."""
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "keep.txt").write_text("still here")
    recorder = tmp_path / "record_argv.py"
    recorder.write_text(f"#!{sys.executable}\nimport json, sys\n"
                        f"open({str(tmp_path / 'argv.json')!r}, 'w').write(json.dumps(sys.argv))\n"
                        "sys.exit(2)\n")
    recorder.chmod(0o755)
    monkeypatch.setenv("LLM_ENERGY_PYTHON_TRANSFORMERS", str(recorder))
    monkeypatch.chdir(tmp_path)
    hub_id = f"org/{EVIL}"
    with open(tmp_path / "log.txt", "w") as log:
        status = runner.run_cell(_cell(small_study()), hub_id, tmp_path / "out", log=log,
                                 project_dir=ROOT)
    assert status == "failed"
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[argv.index("--model-path") + 1] == hub_id
    no_shell_traces(tmp_path)


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def hostile_study(tmp_path_factory, demo_model_dir):
    workdir = tmp_path_factory.mktemp("hostile")
    (workdir / "victim").mkdir()
    (workdir / "victim" / "keep.txt").write_text("still here")
    models_root = tmp_path_factory.mktemp("models")
    (models_root / "victim").mkdir()
    (models_root / "victim" / "keep.txt").write_text("still here")
    model_dir = models_root / EVIL
    shutil.copytree(demo_model_dir, model_dir)
    config_json = json.loads((model_dir / "config.json").read_text())
    config_json["auto_map"] = {"AutoModelForCausalLM": "canary_model.CanaryForCausalLM"}
    (model_dir / "config.json").write_text(json.dumps(config_json))
    (model_dir / "canary_model.py").write_text(CANARY_CODE)

    study = small_study(models=[
        {"name": "shell-path", "path": str(model_dir)},
        {"name": "shell-path-remote-code", "path": str(model_dir), "trust_remote_code": True},
    ], backends={"transformers": {"batch_size": [2]}})
    study["workload"] = {"num_prompts": 2, "input_tokens": 16, "output_tokens": 4}
    study["measurement"].update(cycles=1, idle_duration_s=0.2)
    config = write_config(workdir, study)
    canaries = workdir / "canaries"
    env = {**os.environ, **SECRETS, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(workdir / "hf-home"), "LLM_ENERGY_TEST_CANARY_DIR": str(canaries)}
    proc = subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
                           "--configfile", str(config), "--cores", "2"],
                          capture_output=True, text=True, timeout=900, env=env)
    return workdir, models_root, canaries, proc


def _summary(workdir: Path):
    import pandas as pd

    return pd.read_parquet(study_dir(workdir) / "summary.parquet").set_index("model")


@pytest.mark.e2e
def test_shell_syntax_in_a_model_path_is_never_executed(hostile_study):
    workdir, models_root, _, proc = hostile_study
    assert (study_dir(workdir) / "report.html").exists(), proc.stderr[-4000:]
    no_shell_traces(workdir, models_root)
    summary = _summary(workdir)
    # The model was loaded from the path as given, every character of it.
    assert summary.loc["shell-path", "status"] == "ok", summary.loc["shell-path", "error"]
    prov = json.loads(next((study_dir(workdir) / "cells" / "shell-path").rglob(
        "provenance.json")).read_text())
    assert prov["cell_config"]["model"]["path"].endswith("/" + EVIL)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.e2e
def test_remote_code_runs_only_where_the_config_allows_it(hostile_study):
    workdir, _, canaries, _ = hostile_study
    summary = _summary(workdir)
    assert summary.loc["shell-path-remote-code", "status"] == "ok", \
        summary.loc["shell-path-remote-code", "error"]
    ran_in = [json.loads(p.read_text()) for p in canaries.glob("remote-code-ran-*.json")]
    cells = {a[a.index("--out") + 1] for a in ran_in}
    remote_cell = summary.loc["shell-path-remote-code", "cell_id"]
    assert cells and all(remote_cell in c for c in cells), cells
    assert all(summary.loc["shell-path", "cell_id"] not in c for c in cells)


@pytest.mark.e2e
def test_secrets_never_reach_results_or_logs(hostile_study):
    workdir, _, _, proc = hostile_study
    values = [v.encode() for v in SECRETS.values()]
    scanned = 0
    for path in workdir.rglob("*"):
        if path.is_file() and "hf-home" not in path.parts:
            data = path.read_bytes()
            leaked = [v for v in values if v in data]
            assert not leaked, (path, leaked)
            scanned += 1
    assert scanned > 20  # cells' Parquet and provenance, logs, summary, report, .snakemake
    for value in SECRETS.values():
        assert value not in proc.stdout and value not in proc.stderr
    html = (study_dir(workdir) / "report.html").read_text()
    assert "provenance" in html.lower() and "HF_TOKEN" not in html


@pytest.mark.e2e
def test_study_with_shell_syntax_in_hub_id_is_refused_before_any_job(tmp_path):
    """A hub id with shell syntax is not a hub repository id: the workflow refuses the study in
    validation, with one line naming the key, before any job exists (and were it accepted, it
    would reach the runner as one argument: test above)."""
    study = small_study(models=[{"name": "hub", "hub_id": f"org/{EVIL}"}])
    config = write_config(tmp_path, study)
    proc = subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                           "--configfile", str(config), "--cores", "2", "-n"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "hub_id" in proc.stderr
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("*.parquet"))
