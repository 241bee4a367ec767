"""The default study's chat dataset (llm_energy.workload.chat_dataset), the GPQA prompt writer
and the example studies that point at downloaded datasets."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from llm_energy.study.config import ConfigError, load_study
from llm_energy.workload import chat_dataset as cd
from llm_energy.workload.gpqa import gpqa_record, write_gpqa_prompts

COMMITTED = ROOT / "config" / "datasets" / "smol-chat.jsonl"


def test_committed_file_is_what_the_script_writes(tmp_path):
    out = tmp_path / "smol-chat.jsonl"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_chat_dataset.py"), "--out",
                    str(out)], check=True, capture_output=True)
    assert out.read_bytes() == COMMITTED.read_bytes()


def test_records_are_openai_messages_and_differ_by_seed():
    records = [json.loads(line) for line in COMMITTED.read_text().splitlines()]
    assert len(records) == cd.DEFAULT_RECORDS
    for record in records:
        roles = [m["role"] for m in record["messages"]]
        assert roles == ["user", "assistant"] and all(m["content"] for m in record["messages"])
    assert cd.make_records(8, seed=1) == cd.make_records(8, seed=1)
    assert cd.make_records(8, seed=1) != cd.make_records(8, seed=2)


def test_reply_lengths_follow_the_published_histogram():
    rng = random.Random(5)
    draws = [cd.draw_reply_words(rng) for _ in range(20000)]
    total = sum(cd.OUTPUT_HISTOGRAM)
    # Share in the first bin [2, 83.88) and mean, from the histogram by hand: bin midpoints.
    low, high = cd.OUTPUT_HISTOGRAM_RANGE
    width = (high - low) / len(cd.OUTPUT_HISTOGRAM)
    first = sum(1 for d in draws if d < low + width) / len(draws)
    assert first == pytest.approx(8607 / total, abs=0.015)
    mean = sum((low + (i + 0.5) * width) * c for i, c in enumerate(cd.OUTPUT_HISTOGRAM)) / total
    assert sum(draws) / len(draws) == pytest.approx(mean, rel=0.05)
    assert min(draws) >= 2 and max(draws) <= 4096


def test_background_words_are_pareto_with_the_configured_mean():
    rng = random.Random(3)
    draws = [cd.draw_context_words(rng) for _ in range(40000)]
    with_context = [d for d in draws if d > 0]
    assert len(with_context) / len(draws) == pytest.approx(cd.CONTEXT_SHARE, abs=0.01)
    # Pareto(a=2.5) with mean 40: scale 24, so no draw below 24 and a mean of 40.
    assert min(with_context) >= 24
    assert sum(with_context) / len(with_context) == pytest.approx(cd.CONTEXT_MEAN_WORDS, rel=0.05)


@pytest.mark.smollm2
def test_reply_words_are_one_token_each_for_smollm2(smollm2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    for record in cd.make_records(16, seed=9):
        reply = record["messages"][1]["content"]
        tokens = len(tokenizer(reply, add_special_tokens=False).input_ids)
        assert tokens == len(reply.split())


def test_gpqa_record_uses_ml_energy_template():
    row = {"Question": "2+2?", "Correct Answer": "4", "Incorrect Answer 1": "3",
           "Incorrect Answer 2": "5", "Incorrect Answer 3": "22"}
    record = gpqa_record(row, random.Random(0))
    assert record["prompt"].startswith(
        "What is the correct answer to the following question: 2+2?\n\nChoices:\n(A) ")
    letter = record["answer"][1]
    assert f"({letter}) 4" in record["prompt"] and record["answer"] == f"({letter}) 4"
    assert sorted(line[4:] for line in record["prompt"].splitlines()[-4:]) == \
        ["22", "3", "4", "5"]


def test_gpqa_prompts_file_is_a_prompt_dataset(tmp_path):
    csv_file = tmp_path / "gpqa_diamond.csv"
    csv_file.write_text("Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,"
                        "Incorrect Answer 3\nWhy?,Because,No,Maybe,\"Never, ever\"\n")
    assert write_gpqa_prompts(csv_file, tmp_path / "p.jsonl") == 1
    (record,) = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert "Never, ever" in record["prompt"]


@pytest.mark.parametrize("name", ["sharegpt-chat", "lmarena-chat", "gpqa"])
def test_dataset_examples_are_valid_but_for_the_download(name, tmp_path, monkeypatch):
    """The example studies check out except for the dataset the user downloads: with a file at
    that path, they validate."""
    path = ROOT / "config" / "examples" / f"{name}.yaml"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no dataset at data/"):
        load_study(path)
    import yaml

    dataset = Path(yaml.safe_load(path.read_text())["workload"]["dataset"]["path"])
    dataset.parent.mkdir(parents=True)
    dataset.write_text("{}\n" if dataset.suffix == ".jsonl" else "[]\n")
    study = load_study(path)
    assert study.workload.output_policy == "natural"
