"""The workload library: local datasets in every file type and format, the chat template,
length filters, seeded sampling, length distributions, arrival processes, and the workload
file every backend reads (token ids, target lengths, arrival offsets, token-id hash)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from llm_energy.loadgen import arrivals
from llm_energy.study.workload_spec import (
    DatasetConfig,
    LognormalLengths,
    NormalLengths,
    UniformLengths,
    WorkloadSpec,
    workload_key,
    workload_path,
)
from llm_energy.workload.build import (
    as_spec,
    make_workload,
    read_workload,
    token_ids_sha256,
    write_workload,
)
from llm_energy.workload.dataset import DatasetError, read_records
from llm_energy.workload.lengths import rng, sample_lengths

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
WORDS = [
    "def", "class", "return", "import", "yield", "lambda", "while", "for", "if", "else", "try",
    "except", "finally", "with", "assert", "global", "pass", "break", "continue", "raise"]


@pytest.fixture(scope="module")
def tokenizer(demo_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo_model_dir)
    assert not tok.chat_template  # the demo tokenizer has none; tests add one where needed
    return tok


@pytest.fixture(scope="module")
def templated(demo_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo_model_dir)
    tok.chat_template = TEMPLATE
    return tok


def _text(i: int, words: int) -> str:
    return " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(words)) + f" {i}"


def _prompt_rows(n: int = 40) -> list[dict]:
    # Prompt lengths grow with i; the reply length varies independently.
    return [{"id": i, "question": _text(i, 3 + i), "answer": _text(i + 1, 2 + (i * 5) % 17)}
            for i in range(n)]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _spec(path, n=10, **dataset) -> dict:
    return {"num_prompts": n, "output_tokens": 8, "seed": 3,
            "dataset": {"path": str(path), **dataset}}


# ---------------------------------------------------------------- file types and formats


def test_every_file_type_gives_the_same_workload(tmp_path, tokenizer):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _prompt_rows()
    files = {
        "jsonl": _write_jsonl(tmp_path / "d.jsonl", rows),
        "json": tmp_path / "d.json",
        "csv": tmp_path / "d.csv",
        "parquet": tmp_path / "d.parquet",
        "disk": tmp_path / "disk",
        "disk-dict": tmp_path / "disk-dict",
    }
    files["json"].write_text(json.dumps(rows), encoding="utf-8")
    files["csv"].write_text("id,question,answer\n" + "".join(
        f'{r["id"]},"{r["question"]}","{r["answer"]}"\n' for r in rows), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), files["parquet"])
    datasets.Dataset.from_list(rows).save_to_disk(str(files["disk"]))
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(
        str(files["disk-dict"]))
    built = {}
    for kind, path in files.items():
        extra = {"split": "test"} if kind == "disk-dict" else {}
        built[kind] = make_workload(_spec(path, prompt_field="question", reply_field="answer",
                                          **extra), tokenizer)
    reference = built["jsonl"]
    assert len(reference.prompts) == 10
    for kind, workload in built.items():
        assert workload.prompts == reference.prompts, kind
        assert workload.record_index == reference.record_index, kind
        assert workload.dataset_output_tokens == reference.dataset_output_tokens, kind
    # The ids are the records' texts, encoded as the tokenizer does, in the sampled order.
    for ids, index in zip(reference.prompts, reference.record_index):
        assert ids == tokenizer(rows[index]["question"])["input_ids"]
    for reply, index in zip(reference.dataset_output_tokens, reference.record_index):
        assert reply == len(tokenizer(rows[index]["answer"], add_special_tokens=False)["input_ids"])


def test_sharegpt_first_human_turn_and_reply_length(tmp_path, tokenizer):
    rows = [
        {"conversations": [{"from": "system", "value": "be brief"},
                           {"from": "human", "value": "what is a list"},
                           {"from": "gpt", "value": "a mutable sequence of items in order"},
                           {"from": "human", "value": "and a tuple"}]},
        {"conversations": [{"from": "human", "value": "no answer here"}]},
        {"conversations": [{"from": "gpt", "value": "nobody asked"}]},
        {"conversations": [{"from": "human", "value": "say hi"}, {"from": "gpt", "value": "hi"}]},
    ]
    path = _write_jsonl(tmp_path / "sharegpt.jsonl", rows)
    records = read_records(DatasetConfig(path=str(path), format="sharegpt"))
    # The record without a human turn is skipped; the one without a reply keeps reply None.
    assert [(r.index, r.messages, r.reply) for r in records] == [
        (0, [{"role": "user", "content": "what is a list"}],
         "a mutable sequence of items in order"),
        (1, [{"role": "user", "content": "no answer here"}], None),
        (3, [{"role": "user", "content": "say hi"}], "hi"),
    ]
    workload = make_workload({"num_prompts": 2, "output_tokens": "dataset",
                              "dataset": {"path": str(path), "format": "sharegpt"}}, tokenizer)
    # output_tokens 'dataset' drops the record without a reply; targets are reply lengths.
    assert sorted(workload.record_index) == [0, 3]
    for index, target in zip(workload.record_index, workload.output_tokens):
        reply = records[0].reply if index == 0 else "hi"
        assert target == len(tokenizer(reply, add_special_tokens=False)["input_ids"])
    with pytest.raises(DatasetError, match="only 2 record"):
        make_workload({"num_prompts": 3, "output_tokens": "dataset",
                       "dataset": {"path": str(path), "format": "sharegpt"}}, tokenizer)


def test_messages_chat_template_applied_or_not(tmp_path, tokenizer, templated):
    rows = [{"messages": [{"role": "system", "content": "you answer in code"},
                          {"role": "user", "content": _text(i, 4 + i)},
                          {"role": "assistant", "content": _text(i, 2 + i)}]} for i in range(6)]
    path = _write_jsonl(tmp_path / "chat.jsonl", rows)
    spec = {"num_prompts": 6, "output_tokens": "dataset",
            "dataset": {"path": str(path), "format": "messages"}}
    on = make_workload(spec, templated)
    assert on.info["chat_template_applied"] is True
    for ids, index, target in zip(on.prompts, on.record_index, on.output_tokens):
        prompt = rows[index]["messages"][:2]
        text = templated.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        assert text.endswith("<|assistant|>") and "<|system|>you answer in code" in text
        assert ids == templated(text, add_special_tokens=False)["input_ids"]
        reply = rows[index]["messages"][2]["content"]
        assert target == len(templated(reply, add_special_tokens=False)["input_ids"])
    spec["dataset"]["chat_template"] = False
    off = make_workload(spec, templated)
    assert off.info["chat_template_applied"] is False
    assert off.record_index == on.record_index  # same sample, different encoding
    for ids, index in zip(off.prompts, off.record_index):
        contents = [m["content"] for m in rows[index]["messages"][:2]]
        assert ids == templated("\n\n".join(contents))["input_ids"]
        assert len(ids) < len(on.prompts[on.record_index.index(index)])
    # A tokenizer without a template falls back to the plain encoding, and says so.
    spec["dataset"]["chat_template"] = True
    plain = make_workload(spec, tokenizer)
    assert plain.info["chat_template_applied"] is False and plain.prompts == off.prompts


# ---------------------------------------------------------------- sampling and filters


def test_seeded_sample_exact_count_without_replacement(tmp_path, tokenizer):
    path = _write_jsonl(tmp_path / "d.jsonl", _prompt_rows(60))
    spec = _spec(path, n=25, prompt_field="question")
    first, again = make_workload(spec, tokenizer), make_workload(spec, tokenizer)
    assert len(first.prompts) == len(first.output_tokens) == len(first.arrival_offsets_s) == 25
    assert len(set(first.record_index)) == 25  # no record twice
    assert first.prompts == again.prompts and first.record_index == again.record_index
    other = make_workload({**spec, "seed": 4}, tokenizer)
    assert other.record_index != first.record_index
    # A uniform sample, not the first rows: indices reach the end of the dataset.
    assert max(first.record_index) > 30


def test_length_filters(tmp_path, tokenizer):
    rows = _prompt_rows(40)
    path = _write_jsonl(tmp_path / "d.jsonl", rows)
    lengths = [len(tokenizer(r["question"])["input_ids"]) for r in rows]
    lo, hi = sorted(lengths)[10], sorted(lengths)[25]
    eligible = {i for i, n in enumerate(lengths) if lo <= n <= hi}
    workload = make_workload(_spec(path, n=len(eligible), prompt_field="question",
                                   min_input_tokens=lo, max_input_tokens=hi), tokenizer)
    assert set(workload.record_index) == eligible
    assert all(lo <= len(p) <= hi for p in workload.prompts)
    with pytest.raises(DatasetError, match="left of 40 after the length filters") as info:
        make_workload(_spec(path, n=len(eligible) + 1, prompt_field="question",
                            min_input_tokens=lo, max_input_tokens=hi), tokenizer)
    # Every record visited: the line names the filter that dropped most, with the counts.
    below, above = sum(n < lo for n in lengths), sum(n > hi for n in lengths)
    assert str(info.value).startswith(
        f"workload.dataset.{'max' if above > below else 'min'}_input_tokens: dataset ")
    assert f"dropped {below} by min_input_tokens={lo}, {above} by max_input_tokens={hi})" \
        in str(info.value)
    with pytest.raises(DatasetError, match="^workload.dataset.min_input_tokens: .*nothing left"):
        make_workload(_spec(path, prompt_field="question", min_input_tokens=10_000), tokenizer)
    # Reply-length filters use the reply's tokens.
    replies = [len(tokenizer(r["answer"], add_special_tokens=False)["input_ids"]) for r in rows]
    short = {i for i, n in enumerate(replies) if n <= 8}
    workload = make_workload(_spec(path, n=len(short), prompt_field="question",
                                   reply_field="answer", max_output_tokens=8), tokenizer)
    assert set(workload.record_index) == short


def test_input_length_policy_caps_dataset_prompts(tmp_path, tokenizer):
    path = _write_jsonl(tmp_path / "d.jsonl", _prompt_rows(40))
    own = make_workload(_spec(path, n=20, prompt_field="question"), tokenizer)
    assert own.info["spec"]["input_tokens"] == "dataset"  # the default with a dataset
    capped = make_workload({**_spec(path, n=20, prompt_field="question"), "input_tokens": 12},
                           tokenizer)
    assert capped.record_index == own.record_index
    for full, cut in zip(own.prompts, capped.prompts):
        assert cut == full[:12]
    assert any(len(p) > 12 for p in own.prompts) and any(len(p) < 12 for p in own.prompts)


def test_corpus_workload_keeps_todays_prompts(tokenizer):
    from llm_energy.study.config import WorkloadConfig
    from llm_energy.workload.prompts import build_prompts

    config = WorkloadConfig(num_prompts=6, input_tokens=20, output_tokens=5, seed=2)
    workload = make_workload(config, tokenizer)
    assert workload.prompts == build_prompts(tokenizer, config)
    assert workload.output_tokens == [5] * 6 and workload.record_index == [None] * 6
    assert workload.arrival_offsets_s == [0.0] * 6


def test_corpus_with_a_length_distribution(tokenizer):
    spec = {"num_prompts": 50, "seed": 1,
            "input_tokens": {"distribution": "uniform", "min": 5, "max": 40},
            "output_tokens": {"distribution": "normal", "mean": 20, "std": 5, "min": 10,
                              "max": 30}}
    workload = make_workload(spec, tokenizer)
    lengths = [len(p) for p in workload.prompts]
    expected = sample_lengths(as_spec(spec).input_tokens, 50, rng(1, 1))
    assert lengths == expected.tolist()
    assert min(lengths) >= 5 and max(lengths) <= 40 and len(set(lengths)) > 10
    assert all(10 <= n <= 30 for n in workload.output_tokens)


# ---------------------------------------------------------------- distributions


def test_uniform_lengths_bounds_and_moments():
    values = sample_lengths(UniformLengths(distribution="uniform", min=10, max=50), 20_000,
                            rng(0, 1))
    assert values.min() == 10 and values.max() == 50
    assert abs(values.mean() - 30) < 0.3
    assert abs(values.var() - ((41 ** 2 - 1) / 12)) < 0.05 * ((41 ** 2 - 1) / 12)


def test_normal_lengths_moments_and_truncation():
    from scipy import stats

    wide = sample_lengths(NormalLengths(distribution="normal", mean=200, std=30, min=1,
                                        max=1000), 20_000, rng(5, 2))
    assert abs(wide.mean() - 200) < 3 * 30 / math.sqrt(20_000)
    assert abs(wide.std() - 30) < 0.03 * 30
    narrow = NormalLengths(distribution="normal", mean=100, std=50, min=80, max=120)
    values = sample_lengths(narrow, 20_000, rng(5, 2))
    assert values.min() >= 80 and values.max() <= 120
    # Redrawn, not clipped: no pile-up on the bounds, and the truncated normal's spread.
    assert (values == 80).mean() < 0.05 and (values == 120).mean() < 0.05
    truncated = stats.truncnorm((79.5 - 100) / 50, (120.5 - 100) / 50, loc=100, scale=50)
    assert abs(values.std() - truncated.std()) < 0.03 * truncated.std()


def test_lognormal_lengths_moments():
    spec = LognormalLengths(distribution="lognormal", mean=300, std=200, min=1, max=100_000)
    values = sample_lengths(spec, 40_000, rng(7, 2))
    assert abs(values.mean() - 300) < 0.02 * 300
    assert abs(values.std() - 200) < 0.06 * 200
    mu, _ = spec.mu_sigma
    assert abs(np.median(values) - math.exp(mu)) < 0.03 * math.exp(mu)
    bounded = sample_lengths(spec.model_copy(update={"min": 100, "max": 400}), 5000, rng(7, 2))
    assert bounded.min() >= 100 and bounded.max() <= 400


@pytest.mark.parametrize("policy, message", [
    ({"distribution": "uniform", "min": 50, "max": 10}, "must be >= min"),
    ({"distribution": "normal", "mean": 10, "std": 1, "min": 500, "max": 600}, "almost none"),
    ({"distribution": "lognormal", "mean": 10, "std": 2, "min": 5000, "max": 6000},
     "almost none"),
    ({"distribution": "normal", "mean": 10, "std": 1, "min": 0, "max": 20}, "greater than 0"),
    ({"distribution": "zipf", "min": 1, "max": 20}, "distribution"),
])
def test_impossible_distributions_refused(policy, message):
    with pytest.raises(ValueError, match=message):
        WorkloadSpec(input_tokens=policy)


def test_same_seed_same_lengths_different_streams():
    policy = UniformLengths(distribution="uniform", min=1, max=1000)
    assert (sample_lengths(policy, 100, rng(3, 1)) == sample_lengths(policy, 100, rng(3, 1))).all()
    assert (sample_lengths(policy, 100, rng(3, 1)) != sample_lengths(policy, 100, rng(3, 2))).any()


# ---------------------------------------------------------------- arrivals


def test_arrival_processes():
    assert arrivals.arrival_offsets_s("closed", 3) == [0.0, 0.0, 0.0]
    assert arrivals.arrival_offsets_s("constant", 4, rate_per_s=2.0) == [0.0, 0.5, 1.0, 1.5]
    poisson = arrivals.arrival_offsets_s("poisson", 5000, rate_per_s=4.0, seed=2)
    gaps = np.diff(poisson)
    assert abs(gaps.mean() - 0.25) < 0.02 and abs(gaps.std() / gaps.mean() - 1) < 0.05
    for burstiness in (0.25, 4.0):
        offsets = arrivals.arrival_offsets_s("gamma", 5000, rate_per_s=4.0,
                                             burstiness=burstiness, seed=2)
        gaps = np.diff(offsets)
        assert offsets[0] == 0.0 and (gaps >= 0).all()
        # vLLM's definition: mean gap 1/rate, coefficient of variation 1/sqrt(burstiness).
        assert abs(gaps.mean() - 0.25) < 0.03
        assert abs(gaps.std() / gaps.mean() - 1 / math.sqrt(burstiness)) < 0.08 / burstiness
    assert arrivals.arrival_offsets_s("gamma", 50, rate_per_s=4.0, burstiness=0.5, seed=2) \
        == arrivals.arrival_offsets_s("gamma", 50, rate_per_s=4.0, burstiness=0.5, seed=2)


def test_trace_files(tmp_path):
    csv = tmp_path / "trace.csv"
    csv.write_text("offset_s,extra\n0.0,a\n0.5,b\n0.5,c\n2.25,d\n")
    assert arrivals.read_trace(csv, 3) == [0.0, 0.5, 0.5]
    listed = tmp_path / "trace.json"
    listed.write_text("[0, 1.5, 3]")
    assert arrivals.read_trace(listed, 3) == [0.0, 1.5, 3.0]
    with pytest.raises(ValueError, match="fewer than the 5 requests"):
        arrivals.read_trace(csv, 5)
    unsorted = tmp_path / "unsorted.txt"
    unsorted.write_text("0\n2\n1\n")
    with pytest.raises(ValueError, match="line 3: offsets are not sorted"):
        arrivals.read_trace(unsorted, 3)
    bad = tmp_path / "bad.txt"
    bad.write_text("0\n1\nsoon\n")
    with pytest.raises(ValueError, match="line 3: 'soon' is not a number"):
        arrivals.read_trace(bad, 3)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="cannot read trace"):
        arrivals.read_trace(binary, 1)


def test_workload_offsets_from_the_arrival_keys(tmp_path, tokenizer):
    trace = tmp_path / "t.txt"
    trace.write_text("0\n0.1\n0.4\n")
    workload = make_workload({"num_prompts": 3, "input_tokens": 8, "output_tokens": 4,
                              "arrival": "trace", "trace_path": str(trace)}, tokenizer)
    assert workload.arrival_offsets_s == [0.0, 0.1, 0.4]
    gamma = make_workload({"num_prompts": 30, "input_tokens": 8, "arrival": "gamma",
                           "request_rate_per_s": 5, "burstiness": 0.5, "seed": 9}, tokenizer)
    assert gamma.arrival_offsets_s == arrivals.gamma_offsets_s(30, 5.0, 0.5, 9)


# ---------------------------------------------------------------- the workload file


def test_file_round_trip_and_hash(tmp_path, tokenizer):
    path = _write_jsonl(tmp_path / "d.jsonl", _prompt_rows())
    spec = {**_spec(path, n=12, prompt_field="question", reply_field="answer"),
            "output_tokens": "dataset", "arrival": "poisson", "request_rate_per_s": 3}
    built = make_workload(spec, tokenizer)
    out = write_workload(built, tmp_path / "w" / "x.parquet")
    back = read_workload(out)
    assert back.prompts == built.prompts and back.output_tokens == built.output_tokens
    assert back.arrival_offsets_s == built.arrival_offsets_s
    assert back.record_index == built.record_index
    assert back.info["token_ids_sha256"] == token_ids_sha256(built.prompts)
    assert back.token_ids_sha256 == built.token_ids_sha256
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert table.column("input_tokens").to_pylist() == [len(p) for p in built.prompts]
    # The hash tells prompts apart, also when only the split between prompts moves.
    assert token_ids_sha256([[1, 2], [3]]) != token_ids_sha256([[1], [2, 3]])
    # A file whose ids were altered is refused.
    import pyarrow as pa

    column = table.column("prompt_token_ids").to_pylist()
    column[0] = [*column[0][:-1], column[0][-1] + 1]
    tampered = table.set_column(table.schema.get_field_index("prompt_token_ids"),
                                "prompt_token_ids", pa.array(column, pa.list_(pa.int32())))
    pq.write_table(tampered.replace_schema_metadata(table.schema.metadata), tmp_path / "t.parquet")
    with pytest.raises(ValueError, match="do not match their recorded hash"):
        read_workload(tmp_path / "t.parquet")


def test_workload_key():
    spec = WorkloadSpec().model_dump(mode="json")
    model = {"name": "tiny", "demo": {"vocab_size": 1000}}
    assert workload_key(spec, model) == workload_key(dict(reversed(spec.items())), model)
    assert workload_key({**spec, "seed": 1}, model) != workload_key(spec, model)
    assert workload_key(spec, {**model, "name": "other"}) != workload_key(spec, model)
    assert workload_path(spec, model) == f"resources/workloads/{workload_key(spec, model)}.parquet"


# ---------------------------------------------------------------- bad input


def test_bad_datasets_refused_with_one_line(tmp_path, tokenizer, capfd):
    with pytest.raises(ValueError, match="no dataset at"):
        DatasetConfig(path=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="not a local path"):
        DatasetConfig(path="hf://datasets/some/thing")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown dataset file type '.txt'"):
        DatasetConfig(path=str(tmp_path / "d.txt"))
    (tmp_path / "plain_dir").mkdir()
    with pytest.raises(ValueError, match="not one written by the datasets library"):
        DatasetConfig(path=str(tmp_path / "plain_dir"))
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"prompt": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8 text .byte 15"):   # before any job
        DatasetConfig(path=str(latin))
    rows = _write_jsonl(tmp_path / "rows.jsonl", _prompt_rows(3))
    with pytest.raises(DatasetError, match="^workload.dataset.prompt_field: .*has no field "
                                           "'prompt' .fields: id, question, answer"):
        read_records(DatasetConfig(path=str(rows)))
    (tmp_path / "empty.csv").write_text("prompt\n")       # a header, no records
    with pytest.raises(DatasetError, match="^workload.dataset.path: dataset .*empty.csv is empty"):
        read_records(DatasetConfig(path=str(tmp_path / "empty.csv")))
    (tmp_path / "empty.jsonl").write_text("\n")           # nothing: refused before any job
    with pytest.raises(ValueError, match="dataset .*empty.jsonl is empty"):
        DatasetConfig(path=str(tmp_path / "empty.jsonl"))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(DatasetError, match="^workload.dataset.path: cannot read dataset"):
        read_records(DatasetConfig(path=str(broken)))
    # Blank prompts ask nothing: skipped, and a dataset of only blank prompts is refused.
    blank = _write_jsonl(tmp_path / "blank.jsonl", [{"prompt": "  \n\t "}] * 3)
    with pytest.raises(DatasetError, match="^workload.dataset.format: .*has no record with a "
                                           "non-blank prompt"):
        read_records(DatasetConfig(path=str(blank)))
    some = _write_jsonl(tmp_path / "some.jsonl", [{"prompt": " "}, {"prompt": "hi"},
                                                  {"prompt": ""}, {"prompt": "there"}])
    assert [r.index for r in read_records(DatasetConfig(path=str(some)))] == [1, 3]
    chats = _write_jsonl(tmp_path / "chats.jsonl", [
        {"messages": [{"role": "system", "content": " "}, {"role": "user", "content": "\n"}]},
        {"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "q"}]}])
    assert [r.index for r in read_records(DatasetConfig(path=str(chats),
                                                        format="messages"))] == [1]
    # An unreadable file: the library's own detail (row, position) in our one line, and
    # nothing else printed (its logger would add a second line on stderr).
    capfd.readouterr()
    middle = tmp_path / "middle.jsonl"
    middle.write_text("".join('{"prompt": "p"}\n' for _ in range(10)) + '{"prompt" "p"}\n'
                      + '{"prompt": "q"}\n')
    with pytest.raises(DatasetError, match=r"^workload.dataset.path: cannot read dataset "
                                           r".*middle.jsonl: .*in row 10$"):
        read_records(DatasetConfig(path=str(middle)))
    truncated = tmp_path / "truncated.json"
    truncated.write_text('[{"prompt": "a"},')
    with pytest.raises(DatasetError, match=r"^workload.dataset.path: cannot read dataset "
                                           r".*truncated.json: .*position \d+"):
        read_records(DatasetConfig(path=str(truncated)))
    fake = tmp_path / "fake.parquet"
    fake.write_text("not parquet")
    with pytest.raises(DatasetError, match=r"^workload.dataset.path: cannot read dataset "
                                           r".*fake.parquet: .*not a parquet file"):
        read_records(DatasetConfig(path=str(fake)))
    assert capfd.readouterr().err == ""
    wrong = _write_jsonl(tmp_path / "wrong.jsonl", [{"messages": "not a list"}])
    with pytest.raises(DatasetError, match="^workload.dataset.format: .*record 0 field "
                                           "'messages' is not a non-empty list"):
        read_records(DatasetConfig(path=str(wrong), format="messages"))
    with pytest.raises(ValueError, match="output_tokens 'dataset' needs replies"):
        WorkloadSpec(output_tokens="dataset", dataset={"path": str(rows),
                                                       "prompt_field": "question"})
    with pytest.raises(ValueError, match="needs a workload.dataset"):
        WorkloadSpec(input_tokens="dataset")
    for arrival, extra, message in [
        ("gamma", {"request_rate_per_s": 1}, "burstiness is required"),
        ("constant", {}, "request_rate_per_s is required"),
        ("trace", {"trace_path": str(tmp_path / "none.txt")}, "no trace file"),
        ("closed", {"request_rate_per_s": 2}, "not used with arrival 'closed'"),
    ]:
        with pytest.raises(ValueError, match=message):
            WorkloadSpec(arrival=arrival, **extra)



def test_dataset_prompts_that_cannot_fit_the_context_are_refused(tmp_path, tokenizer):
    from conftest import TINY_DEMO, small_study

    from llm_energy.study.plan import plan_from_config
    from llm_energy.workload.build import check_context

    TINY_DEMO_POSITIONS = TINY_DEMO.get("max_position_embeddings", 2048)

    rows = _write_jsonl(tmp_path / "rows.jsonl", _prompt_rows(12))
    built = make_workload(_spec(rows, n=12, prompt_field="question"), tokenizer)
    need = [len(p) + 8 for p in built.prompts]
    longest = max(need)
    check_context(built, [(longest, "backends.vllm.max_model_len")])  # inclusive: fits
    with pytest.raises(ValueError) as info:
        check_context(built, [(4096, "models[tiny].demo.max_position_embeddings"),
                              (longest - 1, "backends.vllm.max_model_len")])
    message = str(info.value)
    record = built.record_index[need.index(longest)]
    # The key to change: the dataset's prompt-length filter (prompts keep their own length).
    assert message.startswith(f"workload.dataset.max_input_tokens: record {record} needs ")
    assert f"= {longest}, more than backends.vllm.max_model_len = {longest - 1}" in message
    assert "\n" not in message
    # The limits the workload rule checks: every cell's context setting and model limit.
    plan = plan_from_config(small_study(
        backends={"transformers": {"batch_size": [2]},
                  "vllm": {"mode": ["offline", "server"], "max_model_len": 256}},
        workload={"num_prompts": 4, "output_tokens": 8, "dataset": {"path": str(rows),
                                                                    "prompt_field": "question"}}))
    (key,) = plan.workloads
    assert sorted(plan.workload_context_limits(key)) == [
        (256, "backends.vllm.max_model_len"),
        (TINY_DEMO_POSITIONS, "models[tiny].demo.max_position_embeddings")]


def test_new_workload_keys_at_default_leave_cell_ids_unchanged(tmp_path):
    from conftest import small_study

    from llm_energy.study.config import validate_study
    from llm_energy.study.identity import identity
    from llm_energy.study.matrix import expand

    # The workload keys every cell was hashed with before datasets, distributions and the
    # new arrivals existed: at their defaults the new keys must not enter the hash.
    before = {"num_prompts", "input_tokens", "output_tokens", "seed", "arrival", "concurrency",
              "request_rate_per_s", "request_timeout_s"}
    cells, _ = expand(validate_study(small_study()))
    assert all(set(identity(c.config)["workload"]) == before for c in cells)
    path = _write_jsonl(tmp_path / "d.jsonl", _prompt_rows(5))
    with_data, _ = expand(validate_study(small_study(workload={
        "num_prompts": 4, "output_tokens": 8, "dataset": {"path": str(path)}})))
    hashed = identity(with_data[0].config)["workload"]
    assert hashed["dataset"]["path"] == str(path) and hashed["input_tokens"] == "dataset"
    assert {c.cell_id for c in with_data}.isdisjoint(c.cell_id for c in cells)


def test_workload_file_offsets_drive_the_load_generator():
    """Gamma and trace schedules reach the server at the offsets the workload file holds."""
    from fakes.openai_server import FakeServer

    from llm_energy.loadgen.client import Endpoint, LoadSpec, run_load

    prompts = [[10 + i, 11, 12] for i in range(6)]
    offsets = arrivals.gamma_offsets_s(6, 8.0, 0.5, seed=4)
    spec = LoadSpec.from_workload({"arrival": "gamma", "request_rate_per_s": 8.0,
                                   "burstiness": 0.5, "arrival_offsets_s": offsets})
    with FakeServer(token_delay_s=0.001) as server:
        result = run_load(Endpoint(server.base_url, "fake-model"), prompts, 2, spec)
    sent = [r.arrival_s - result.start_s for r in result.records]
    for want, got in zip(offsets, sent):     # never early; late only by scheduling delay
        assert want - 0.005 <= got <= want + 0.5
    assert all(r.success for r in result.records)
    with pytest.raises(ValueError, match="needs the offsets of the workload file"):
        LoadSpec(arrival="trace")


def test_repeated_workload_replays_its_arrival_schedule_back_to_back():
    """A cycle repeating its workload R times sends R x n requests: the schedule is replayed
    shifted by its period (last offset + mean gap), so each repetition keeps its pattern."""
    from llm_energy.loadgen.arrivals import repeat_schedule

    assert repeat_schedule([0.0, 0.5, 1.0], 2) == [0.0, 0.5]
    assert repeat_schedule([0.0, 0.5, 1.0], 7) == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert repeat_schedule([0.2], 3) == pytest.approx([0.2, 0.6, 1.0])
    with pytest.raises(ValueError):
        repeat_schedule([], 3)
