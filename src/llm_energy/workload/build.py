"""Build a workload once, in the pipeline's environment: token ids per request, target output
lengths and arrival offsets, written to one Parquet file that every backend's measuring
process reads (so every backend gets the same ids whatever its transformers version).

Steps, all deterministic for `seed`:
1. Records: a local dataset (`workload.dataset`) or, without one, passages of Python's
   standard-library sources (`workload.prompts.corpus_text`).
2. Dataset records are visited in a seeded random order; each is encoded (the tokenizer's chat
   template with the generation prompt when `dataset.chat_template` is on and the tokenizer has
   one, else the prompt messages' contents joined by blank lines with the tokenizer's special
   tokens) and kept when it passes the length filters, until `num_prompts` are kept: a uniform
   sample without replacement of the records that pass. Fewer than `num_prompts` is an error.
3. Input lengths: `dataset` keeps each prompt's own length; a number or distribution gives
   each request a length, and its prompt is cut to at most that many tokens (the first ones).
   Corpus passages are exactly that long.
4. Output lengths: a number, a distribution, or `dataset` (the reply's length in tokens,
   encoded without special tokens): each request's exact target under `output_policy`
   fixed/dataset (EOS ignored), its cap under natural (EOS allowed). The policy is written
   into the metadata (`output_policy`).
5. Arrival offsets from `loadgen.arrivals`.

File layout (`WORKLOAD_COLUMNS`): one row per request in send order, and the build facts
(settings, token-id hash, chat template applied, record counts) as JSON in the schema
metadata under `llm_energy.workload`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llm_energy.loadgen.arrivals import arrival_offsets_s
from llm_energy.study.workload_spec import WorkloadSpec
from llm_energy.workload.dataset import ChatRecord, DatasetError, read_records
from llm_energy.workload.lengths import (
    STREAM_INPUT,
    STREAM_OUTPUT,
    STREAM_SAMPLE,
    rng,
    sample_lengths,
)

METADATA_KEY = b"llm_energy.workload"
#: Column -> meaning (units) of a workload file.
WORKLOAD_COLUMNS = {
    "request_index": "position in send order",
    "record_index": "row of the dataset the prompt came from (null for corpus passages)",
    "prompt_token_ids": "the prompt's token ids, as every backend receives them",
    "input_tokens": "prompt length, tokens",
    "output_tokens": "target output length, tokens (output_policy fixed/dataset: exact, EOS "
                     "ignored; natural: the cap, EOS allowed; the policy is in the metadata)",
    "dataset_output_tokens": "the record's reply length, tokens (null without a reply)",
    "arrival_offset_s": "send time after the start of a cycle, seconds",
}
_ENCODE_CHUNK = 256


@dataclass(frozen=True)
class Workload:
    """A built workload, in send order."""

    prompts: list[list[int]]
    output_tokens: list[int]
    arrival_offsets_s: list[float]
    record_index: list[int | None]
    dataset_output_tokens: list[int | None]
    info: dict[str, Any]

    @property
    def token_ids_sha256(self) -> str:
        return token_ids_sha256(self.prompts)

    @property
    def output_policy(self) -> str:
        """`fixed`, `dataset` (each output exactly its `output_tokens`, EOS ignored) or
        `natural` (EOS allowed, `output_tokens` is each request's cap)."""
        return str(self.info.get("output_policy") or "fixed")


def token_ids_sha256(prompts: list[list[int]]) -> str:
    """SHA-256 of the prompts' token ids: per prompt its length then its ids, as little-endian
    int64. Equal hashes mean every backend got the same ids in the same order."""
    digest = hashlib.sha256()
    for ids in prompts:
        digest.update(np.asarray([len(ids), *ids], dtype="<i8").tobytes())
    return digest.hexdigest()


def as_spec(workload: Any) -> WorkloadSpec:
    """A `WorkloadSpec` from a config model or dict with (at least) its fields."""
    data = workload.model_dump(mode="json", exclude_unset=False) if hasattr(
        workload, "model_dump") else dict(workload)
    return WorkloadSpec.model_validate({k: v for k, v in data.items()
                                        if k in WorkloadSpec.model_fields})


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def encode_prompts(tokenizer: Any, records: list[ChatRecord], chat_template: bool) -> list[list[int]]:
    """Token ids of each record's prompt (see the module docstring for the rule)."""
    if chat_template and has_chat_template(tokenizer):
        texts = [tokenizer.apply_chat_template(r.messages, tokenize=False,
                                               add_generation_prompt=True) for r in records]
        return list(tokenizer(texts, add_special_tokens=False)["input_ids"])
    texts = ["\n\n".join(m["content"] for m in r.messages) for r in records]
    return list(tokenizer(texts, add_special_tokens=True)["input_ids"])


def _reply_lengths(tokenizer: Any, records: list[ChatRecord]) -> list[int | None]:
    texts = [r.reply for r in records if r.reply]
    encoded = iter(tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else iter(())
    return [len(next(encoded)) if r.reply else None for r in records]


def _from_dataset(spec: WorkloadSpec, tokenizer: Any) -> tuple[list[list[int]], list[int],
                                                               list[int | None], dict[str, Any]]:
    cfg = spec.dataset
    assert cfg is not None
    records = read_records(cfg)
    order = rng(spec.seed, STREAM_SAMPLE).permutation(len(records))
    need_reply = spec.output_tokens == "dataset" or cfg.min_output_tokens is not None \
        or cfg.max_output_tokens is not None
    prompts: list[list[int]] = []
    indices: list[int] = []
    replies: list[int | None] = []
    dropped = dict.fromkeys(("min_input_tokens", "max_input_tokens", "reply_field",
                             "min_output_tokens", "max_output_tokens"), 0)
    visited = 0
    for first in range(0, len(order), _ENCODE_CHUNK):
        if len(prompts) >= spec.num_prompts:
            break
        chunk = [records[i] for i in order[first : first + _ENCODE_CHUNK]]
        ids = encode_prompts(tokenizer, chunk, cfg.chat_template)
        reply_lengths = _reply_lengths(tokenizer, chunk)
        for record, prompt, reply in zip(chunk, ids, reply_lengths):
            if len(prompts) >= spec.num_prompts:
                break
            visited += 1
            reason = _filtered(cfg, len(prompt), reply, need_reply)
            if reason is not None:
                dropped[reason] += 1
                continue
            prompts.append(list(prompt))
            indices.append(record.index)
            replies.append(reply)
    if len(prompts) < spec.num_prompts:
        what = "nothing" if not prompts else f"only {len(prompts)} record(s)"
        # The key to change: the filter that dropped most records (num_prompts if none did).
        key = max(dropped, key=dropped.__getitem__) if any(dropped.values()) else None
        why = ", ".join(f"{n} by {k}" + (f"={getattr(cfg, k)}" if k != "reply_field" else
                                         " (no reply)") for k, n in dropped.items() if n)
        raise DatasetError(
            f"{'workload.dataset.' + key if key else 'workload.num_prompts'}: dataset "
            f"{cfg.path}: {what} left of {len(records)} after the length filters "
            f"(input tokens {cfg.min_input_tokens}..{cfg.max_input_tokens or 'any'}"
            + (", a reply" if need_reply else "")
            + f"; dropped {why or 'none'}), fewer than num_prompts={spec.num_prompts}")
    counts = {"records": len(records), "records_visited": visited}
    return prompts, indices, replies, counts


def _filtered(cfg: Any, n: int, reply: int | None, need_reply: bool) -> str | None:
    """The length filter (its key) that drops a record with `n` prompt tokens and a reply of
    `reply` tokens, or None when it is kept."""
    if n < cfg.min_input_tokens:
        return "min_input_tokens"
    if cfg.max_input_tokens and n > cfg.max_input_tokens:
        return "max_input_tokens"
    if need_reply and not reply:
        return "reply_field"
    if cfg.min_output_tokens and reply < cfg.min_output_tokens:
        return "min_output_tokens"
    if cfg.max_output_tokens and reply > cfg.max_output_tokens:
        return "max_output_tokens"
    return None


def _from_corpus(spec: WorkloadSpec, tokenizer: Any, lengths: np.ndarray) -> list[list[int]]:
    from llm_energy.workload.prompts import corpus_text

    ids: list[int] = tokenizer(corpus_text(), add_special_tokens=False)["input_ids"]
    longest = int(lengths.max())
    if len(ids) < longest + 1:
        raise ValueError(f"workload.input_tokens={longest} exceeds the prompt corpus "
                         f"({len(ids)} tokens for this tokenizer)")
    # random.Random(seed).randrange, as the corpus workload has always drawn its passages.
    picker = random.Random(spec.seed)
    starts = [picker.randrange(0, len(ids) - int(n)) for n in lengths]
    return [ids[s : s + int(n)] for s, n in zip(starts, lengths)]


def make_workload(workload: Any, tokenizer: Any) -> Workload:
    """Build a workload in memory (see the module docstring). Raises `DatasetError` or
    ValueError with one line on bad input."""
    spec = as_spec(workload)
    n = spec.num_prompts
    info: dict[str, Any] = {"spec": spec.model_dump(mode="json"),
                            "tokenizer": getattr(tokenizer, "name_or_path", None)}
    if spec.dataset is None:
        lengths = sample_lengths(spec.input_tokens, n, rng(spec.seed, STREAM_INPUT))
        prompts = _from_corpus(spec, tokenizer, lengths)
        indices: list[int | None] = [None] * n
        replies: list[int | None] = [None] * n
        info["chat_template_applied"] = False
    else:
        prompts, found, replies, counts = _from_dataset(spec, tokenizer)
        indices = list(found)
        info.update(counts)
        info["chat_template_applied"] = spec.dataset.chat_template and has_chat_template(tokenizer)
        if spec.input_tokens != "dataset":
            caps = sample_lengths(spec.input_tokens, n, rng(spec.seed, STREAM_INPUT))
            prompts = [p[: int(c)] for p, c in zip(prompts, caps)]
    if spec.output_tokens == "dataset":
        outputs = [int(r) for r in replies]  # type: ignore[arg-type] - filtered to replies
    else:
        outputs = [int(v) for v in sample_lengths(spec.output_tokens, n,
                                                  rng(spec.seed, STREAM_OUTPUT))]
    offsets = arrival_offsets_s(spec.arrival, n, seed=spec.seed,
                                rate_per_s=spec.request_rate_per_s,
                                burstiness=spec.burstiness, trace_path=spec.trace_path)
    info["token_ids_sha256"] = token_ids_sha256(prompts)
    info["output_policy"] = spec.output_policy
    info["num_requests"] = n
    return Workload(prompts, outputs, offsets, indices, replies, info)


def write_workload(workload: Workload, path: str | Path) -> Path:
    """Write `workload` to `path` (Parquet, atomically)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(workload.prompts)
    table = pa.table({
        "request_index": pa.array(range(n), pa.int32()),
        "record_index": pa.array(workload.record_index, pa.int64()),
        "prompt_token_ids": pa.array(workload.prompts, pa.list_(pa.int32())),
        "input_tokens": pa.array([len(p) for p in workload.prompts], pa.int32()),
        "output_tokens": pa.array(workload.output_tokens, pa.int32()),
        "dataset_output_tokens": pa.array(workload.dataset_output_tokens, pa.int32()),
        "arrival_offset_s": pa.array(workload.arrival_offsets_s, pa.float64()),
    })
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(workload.info).encode()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def check_context(workload: Workload, limits: Sequence[tuple[int, str]]) -> None:
    """Refuse a workload whose longest request (prompt + target output tokens) exceeds a
    context limit of a cell that uses it (`Plan.workload_context_limits`: (tokens, where)),
    with one line naming the key to change: `workload.dataset.max_input_tokens` for a
    dataset's own prompt lengths, else `workload.input_tokens`. The study's validation catches
    what the config says, this the prompt lengths known only once tokenised."""
    if not workload.prompts or not limits:
        return
    need = [len(p) + o for p, o in zip(workload.prompts, workload.output_tokens)]
    longest = max(range(len(need)), key=need.__getitem__)
    limit, where = min(limits, key=lambda lw: lw[0])
    if need[longest] > limit:
        record = workload.record_index[longest]
        what = f"record {record}" if record is not None else f"request {longest}"
        own_lengths = (workload.info.get("spec") or {}).get("input_tokens") == "dataset"
        key = "workload.dataset.max_input_tokens" if own_lengths else "workload.input_tokens"
        fix = ("set it to drop longer prompts" if own_lengths else "shorten the prompts")
        raise ValueError(
            f"{key}: {what} needs {len(workload.prompts[longest])} prompt tokens + "
            f"{workload.output_tokens[longest]} output tokens = {need[longest]}, more than "
            f"{where} = {limit}; {fix} or lower workload.output_tokens")


def checked_workload(workload: Any, tokenizer: Any,
                     context_limits: Sequence[tuple[int, str]] = ()) -> Workload:
    """The workload built in memory (`make_workload`) and checked against `context_limits`
    (`check_context`): what the workload rule writes, and what the plan-time preflight
    (`llm_energy.execution.preflight`) runs before any job."""
    built = make_workload(workload, tokenizer)
    check_context(built, context_limits)
    return built


def build_workload(workload: Any, tokenizer: Any, path: str | Path,
                   context_limits: Sequence[tuple[int, str]] = ()) -> Workload:
    """Build the workload, check it fits `context_limits` (`check_context`) and write it to
    `path`; returns what was written."""
    built = checked_workload(workload, tokenizer, context_limits)
    write_workload(built, path)
    return built


def read_workload(path: str | Path) -> Workload:
    """A workload file as written by `write_workload`; checks its token-id hash."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    metadata = table.schema.metadata or {}
    info = json.loads(metadata.get(METADATA_KEY, b"{}"))
    rows = table.sort_by("request_index").to_pydict()
    built = Workload(rows["prompt_token_ids"], rows["output_tokens"], rows["arrival_offset_s"],
                     rows["record_index"], rows["dataset_output_tokens"], info)
    if info.get("token_ids_sha256") not in (None, built.token_ids_sha256):
        raise ValueError(f"workload file {path}: token ids do not match their recorded hash")
    return built


def build_for_model(workload: Any, model_path: str, path: str | Path,
                    trust_remote_code: bool = False,
                    context_limits: Sequence[tuple[int, str]] = ()) -> Workload:
    """Build the workload with the tokenizer of the model at `model_path` (a directory or hub
    id) and write it to `path` (`build_workload`)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    return build_workload(workload, tokenizer, path, context_limits)
