"""The workload every backend sees: the same prompt token ids, truncated to the same length,
with the same fixed output length. Prompts are cut from Python's standard library sources
(deterministic for a seed, present on every machine, no download)."""

from __future__ import annotations

import random
import sysconfig
from pathlib import Path
from typing import Any

from llm_energy.study.config import WorkloadConfig

_CORPUS_FILES = ("argparse.py", "collections/__init__.py", "json/decoder.py", "pathlib.py",
                 "textwrap.py", "typing.py", "dataclasses.py", "inspect.py")


def corpus_text() -> str:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts = [(stdlib / name).read_text(errors="replace") for name in _CORPUS_FILES
             if (stdlib / name).exists()]
    if not parts:
        raise RuntimeError(f"prompt corpus not found under {stdlib}")
    return "\n".join(parts)


def build_prompts(tokenizer: Any, workload: WorkloadConfig) -> list[list[int]]:
    """`num_prompts` token-id lists of exactly `input_tokens` ids each."""
    ids: list[int] = tokenizer(corpus_text(), add_special_tokens=False)["input_ids"]
    if len(ids) < workload.input_tokens + 1:
        raise ValueError(
            f"workload.input_tokens={workload.input_tokens} exceeds the prompt corpus "
            f"({len(ids)} tokens for this tokenizer)"
        )
    rng = random.Random(workload.seed)
    starts = [rng.randrange(0, len(ids) - workload.input_tokens) for _ in range(workload.num_prompts)]
    return [ids[s : s + workload.input_tokens] for s in starts]
