"""GPQA as chat prompts, in the template of ML.ENERGY's `gpqa` task (ml-energy/benchmark at
c1d6557, mlenergy/benchmark/llm/datasets.py `GPQADataset.sample`): the question, then the four
answers shuffled with a seed and lettered (A)-(D). The reply is the correct answer with its
letter. GPQA itself is gated and never downloaded here: read the CSV the user downloaded
(`gpqa_diamond.csv`, columns `Question`, `Correct Answer`, `Incorrect Answer 1..3`) and write a
JSONL file for `workload.dataset` with `format: prompt`, `reply_field: answer`."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

ANSWER_COLUMNS = ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3",
                  "Correct Answer")


def gpqa_record(row: dict[str, str], rng: random.Random) -> dict[str, str]:
    """One prompt record ({prompt, answer}) from one GPQA row."""
    missing = [c for c in ("Question", *ANSWER_COLUMNS) if c not in row]
    if missing:
        raise ValueError(f"GPQA row without column(s) {', '.join(missing)}")
    choices = [row[c].strip() for c in ANSWER_COLUMNS]
    correct = choices[-1]
    rng.shuffle(choices)
    prompt = ("What is the correct answer to the following question: "
              f"{row['Question']}\n\nChoices:")
    for letter, choice in zip("ABCD", choices, strict=True):
        prompt += f"\n({letter}) {choice}"
    return {"prompt": prompt, "answer": f"({'ABCD'[choices.index(correct)]}) {correct}"}


def write_gpqa_prompts(csv_path: str | Path, out: str | Path, seed: int = 0) -> int:
    """Write one JSONL record per CSV row; returns the number written."""
    rng = random.Random(seed)
    with open(csv_path, newline="", encoding="utf-8") as handle:
        records = [gpqa_record(row, rng) for row in csv.DictReader(handle)]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                         encoding="utf-8")
    return len(records)
