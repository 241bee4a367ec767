"""VllmBackend against a real vLLM engine: runs tests/vllm_smoke.py in .venvs/vllm (one engine
start, about a minute on 2 CPU cores)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VLLM_PYTHON = ROOT / ".venvs" / "vllm" / "bin" / "python"

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not VLLM_PYTHON.exists(),
                       reason=f"no vLLM environment at {VLLM_PYTHON} (run `make venv-vllm`)"),
]


def test_vllm_backend_smoke(demo_model_dir):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), TOKENIZERS_PARALLELISM="false")
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    result = subprocess.run(
        [str(VLLM_PYTHON), str(ROOT / "tests" / "vllm_smoke.py"), str(demo_model_dir)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "SMOKE_RESULT" in result.stdout, output[-6000:]
