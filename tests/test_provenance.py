"""Provenance per cell: resolved config, package versions, code fingerprint, git commit and
dirty flag, host, CPU and GPU models, driver and CUDA versions, Slurm job id. The GPU is a
fake NVML module read through a fake of Zeus's GPU manager (this machine has none); everything
else is read for real."""

import json
import os
import shutil
import subprocess
import sys
import types

import pytest
from conftest import ROOT, VLLM_PYTHON
from fake_hw import ZeusOpener

from llm_energy.analysis.stale import measured_packages
from llm_energy.execution import runner
from llm_energy.measure import fingerprint, provenance


class _FakeNvml(types.ModuleType):
    """What nvidia-ml-py answers on a two-GPU H100 node; the second GPU cannot report its
    power limit (NVML raises NotSupported on some boards)."""

    class NVMLError(Exception):
        pass

    def __init__(self):
        super().__init__("pynvml")
        self.shut_down = False

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        self.shut_down = True

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H100 80GB HBM3"  # older bindings return bytes

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-0000000{h}"

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(total=80 * 2**30)

    def nvmlDeviceGetPowerManagementLimit(self, h):
        if h == 1:
            raise self.NVMLError("Not Supported")
        return 700_000

    def nvmlSystemGetDriverVersion(self):
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion(self):
        return 12040


CELL = {"cell_id": "0123456789ab", "backend": "transformers", "settings": {"batch_size": 2}}


def test_collect_records_hardware_software_and_job(monkeypatch):
    from llm_energy.telemetry import nvidia

    nvml = _FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    zeus = ZeusOpener(nvml)
    monkeypatch.setattr(nvidia, "open_zeus", zeus)
    for name in provenance.RECORDED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_PARTITION", "gpu")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-00000001")
    monkeypatch.setenv("HF_TOKEN", "secret-token")
    prov = json.loads(json.dumps(provenance.collect(CELL, {"gpu": "nvml-counter"})))

    assert prov["cell_config"] == CELL and prov["energy_sources"] == {"gpu": "nvml-counter"}
    assert prov["gpus"][0] == {"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-00000000",
                               "memory_mb": 80 * 1024, "power_limit_w": 700.0}
    assert prov["gpus"][1]["power_limit_w"] is None and prov["gpus"][1]["uuid"] == "GPU-00000001"
    assert prov["driver_version"] == "550.54.15" and prov["cuda_driver_version"] == "12.4"
    assert zeus.asked == [[0, 1]]   # name and power limit through Zeus, over every GPU
    assert prov["slurm_job_id"] == "4242"
    assert prov["environment"] == {"SLURM_JOB_ID": "4242", "SLURM_JOB_PARTITION": "gpu",
                                   "CUDA_VISIBLE_DEVICES": "GPU-00000001"}
    assert "secret-token" not in json.dumps(prov)
    # Software: every package `llm-energy stale` compares is looked up; the installed ones
    # carry their versions.
    assert set(measured_packages("transformers")) <= set(provenance.recorded_packages())
    assert prov["packages"]["torch"] and prov["packages"]["transformers"]
    assert prov["python"] == sys.version.split()[0]
    assert prov["code_fingerprint"] == provenance.code_fingerprint()
    assert prov["host"] and prov["cpu_model"] and prov["cpu_count"] >= prov["cpus_allowed"] >= 1


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_commit_and_dirty_flag_are_the_checkouts():
    state = provenance.git_state()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip() != ""
    assert state == {"commit": head, "dirty": dirty}


def test_without_nvml_there_are_no_gpus(monkeypatch):
    broken = types.ModuleType("pynvml")

    def fail():
        raise RuntimeError("NVML Shared Library Not Found")

    broken.nvmlInit = fail
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    assert provenance.gpu_info() == {"gpus": [], "driver_version": None, "cuda_driver_version": None}


def _package_copy(tmp_path):
    copy = tmp_path / "llm_energy"
    shutil.copytree(fingerprint._PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _edit(path, old, new):
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def test_code_fingerprint_follows_the_measured_code_only(tmp_path):
    copy = _package_copy(tmp_path)
    before = fingerprint.code_fingerprint(copy)
    assert before == provenance.code_fingerprint() and len(before) == 16
    # Comments, docstrings, blank lines, quotes and line breaks: the same code.
    (copy / "__init__.py").write_text((copy / "__init__.py").read_text() + "# a comment\n")
    _edit(copy / "measure" / "metrics.py", "\n\n", "\n\n# a new comment\n\n\n")
    _edit(copy / "measure" / "rows.py", '"""', '"""A longer docstring.\n\n')
    _edit(copy / "telemetry" / "sampler.py", "):\n", "):  # trailing comment\n")
    _edit(copy / "measure" / "protocol.py", "(self, ", "(\n        self,\n        ")
    _edit(copy / "measure" / "child.py", '__name__ == "__main__"', "__name__ == '__main__'")
    assert fingerprint.code_fingerprint(copy) == before
    # Code outside the measured subpackages (the CLI, the study, analysis): not a change.
    _edit(copy / "cli.py", "def ", "def _unused():\n    return 1\n\n\ndef ")
    _edit(copy / "analysis" / "summary.py", "def ", "def _unused():\n    return 1\n\n\ndef ")
    assert fingerprint.code_fingerprint(copy) == before
    # A change of code that runs in a measurement: a new fingerprint.
    _edit(copy / "measure" / "metrics.py", "\ndef ", "\nCHANGED = 1\n\n\ndef ")
    assert fingerprint.code_fingerprint(copy) != before


def test_a_docstring_added_to_a_function_is_not_a_change():
    plain = "def f(x):\n    return x\n"
    documented = 'def f(x):\n    """Return x.\n\n    More."""\n    return x\n'
    joined = "def f(x):\n    'Return' ' x.'\n    return x\n"
    tokens = list(fingerprint.normalized_tokens(plain))
    assert list(fingerprint.normalized_tokens(documented)) == tokens
    assert list(fingerprint.normalized_tokens(joined)) == tokens
    # A string that is not a docstring is code.
    assert list(fingerprint.normalized_tokens("def f(x):\n    y = 'a'\n    return x\n")) != tokens


#: Source with what tokenizes differently across Python versions: f-strings (split into
#: several tokens since 3.12), nested and multi-line ones, implicit concatenation, a
#: docstring, comments, line continuations.
TRICKY = '''"""Module docstring."""
import os  # comment

X = f"{os.sep!r:>{4}} and {{braces}}" f'{1 + 2}' "plain"
Y = f"""multi
{X}
line"""
Z = (1 +
     2) \\
    + 3


class A:
    """Doc."""

    def f(self, v: int = 0) -> str:
        return f"{v=}" + rf"\\d{v}"
'''


def _fingerprints_in(python: str, tricky_root) -> tuple[str, str]:
    """(fingerprint of this checkout's package, of `tricky_root`) computed by `python` from
    the source file alone (no llm_energy install, no third-party package needed)."""
    code = ("import importlib.util, sys\n"
            "spec = importlib.util.spec_from_file_location('fp', sys.argv[1])\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "print(m.code_fingerprint(), m.code_fingerprint(sys.argv[2]))")
    source = str(ROOT / "src" / "llm_energy" / "measure" / "fingerprint.py")
    out = subprocess.run([python, "-c", code, source, str(tricky_root)], capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    return out[0], out[1]


@pytest.fixture
def tricky_root(tmp_path):
    (tmp_path / "measure").mkdir()
    (tmp_path / "measure" / "tricky.py").write_text(TRICKY)
    return tmp_path


@pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="no vLLM environment (make venv-vllm)")
def test_code_fingerprint_is_the_same_in_the_vllm_environment(tricky_root):
    """The pipeline's `.venv` (this interpreter) and `.venvs/vllm` agree, on the real
    package and on source that tokenizes differently across Python versions."""
    here = _fingerprints_in(sys.executable, tricky_root)
    assert here[0] == provenance.code_fingerprint()
    assert _fingerprints_in(str(VLLM_PYTHON), tricky_root) == here


def _other_pythons() -> list[str]:
    """Other interpreters to compare: python3.10 ... python3.14 on PATH that run, and any
    listed in $LLM_ENERGY_TEST_PYTHONS (os.pathsep-separated)."""
    found = [p for p in os.environ.get("LLM_ENERGY_TEST_PYTHONS", "").split(os.pathsep) if p]
    for minor in range(10, 15):
        path = shutil.which(f"python3.{minor}")
        if path and subprocess.run([path, "-c", "pass"], capture_output=True).returncode == 0:
            found.append(path)
    return found


def test_code_fingerprint_is_the_same_in_other_python_versions(tricky_root):
    others = _other_pythons()
    if not others:
        pytest.skip("no other Python found (set LLM_ENERGY_TEST_PYTHONS)")
    here = _fingerprints_in(sys.executable, tricky_root)
    for python in others:
        assert _fingerprints_in(python, tricky_root) == here, python


def test_a_failed_cell_still_names_its_job_and_code(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    cell = {"cell_id": "0123456789ab", "model": {"name": "tiny"}, "backend": "transformers",
            "settings": {"batch_size": 2}, "measurement": {"device": "cpu"}}
    runner.write_failed_cell(cell, tmp_path, "RuntimeError: boom")
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["status"] == "failed" and prov["slurm_job_id"] == "77"
    assert prov["code_fingerprint"] == provenance.code_fingerprint()
    assert prov["cell_config"] == cell and prov["git"]["commit"]


def test_the_fingerprint_covers_what_the_measured_code_imports():
    """Every llm_energy module the measured code imports is fingerprinted, or left out on
    purpose (`NOT_FINGERPRINTED`, with the reason): a new import forces that decision."""
    import ast

    root = fingerprint._PACKAGE_ROOT
    outside = set()
    for sub in fingerprint.MEASURED_CODE:
        for path in (root / sub).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.module
                         else [])
                for name in names:
                    parts = name.split(".")
                    if parts[0] == "llm_energy" and parts[1] not in fingerprint.MEASURED_CODE \
                            and name not in fingerprint.MEASURED_MODULES:
                        outside.add(name)
    assert outside == set(fingerprint.NOT_FINGERPRINTED)


def test_requirements_lock_hash_is_the_backends_lock_file(tmp_path):
    """Each cell records the sha256 of its backend's pip lock (the registry's
    `requirements`), so cells built from conda, a container or the venvs can be compared."""
    import hashlib

    from llm_energy.backends import registry
    from llm_energy.measure.provenance import requirements_lock

    for backend in ("transformers", "vllm"):
        spec = registry.get(backend)
        expected = hashlib.sha256((ROOT / spec.requirements).read_bytes()).hexdigest()
        assert requirements_lock(backend, ROOT) == {"file": spec.requirements, "sha256": expected}
    assert requirements_lock("vllm", ROOT)["sha256"] != requirements_lock("transformers", ROOT)["sha256"]
    # A checkout without the file (an installed package): the name, no hash.
    assert requirements_lock("vllm", tmp_path) == {"file": "requirements/vllm.txt", "sha256": None}
