"""Read a local dataset into chat records: the prompt as chat messages and the reply text.

Files (JSONL, JSON, CSV, Parquet) are read with the `datasets` library's packaged builders,
directories written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` with
`datasets.load_from_disk`. Nothing is downloaded: `DatasetConfig` refuses paths that are not
on this machine, and the builders' cache lives in a temporary directory.

Formats (`DatasetConfig.format`):
- `prompt`: the record's text field is one user message; `reply_field`, if given, is the reply.
- `messages`: OpenAI chat messages (`role`, `content`); a final `assistant` message is the
  reply, the messages before it are the prompt.
- `sharegpt`: `conversations` of turns (`from`, `value`); the first human turn is the prompt
  and the turn right after it, when it is the model's, the reply (as vLLM's `bench serve`
  reads ShareGPT).

Every problem raises `DatasetError` with one line naming the key to change, the file and the
record."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_energy.study.workload_spec import DATA_FILE_BUILDERS, DatasetConfig

_HUMAN = ("human", "user")
_MODEL = ("gpt", "assistant", "chatgpt", "bard", "model", "bing")


class DatasetError(ValueError):
    """A dataset cannot be used; `str()` is one line: the key to change (`workload.dataset.<key>:`),
    the file and what is wrong."""


@dataclass(frozen=True)
class ChatRecord:
    index: int                      # row of the dataset
    messages: list[dict[str, str]]  # the prompt, as chat messages (role, content)
    reply: str | None               # the reply's text, when the dataset has one


def _check_utf8(path: Path) -> None:
    data = path.read_bytes()
    if not data.strip():
        raise DatasetError(f"workload.dataset.path: dataset {path} is empty")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"workload.dataset.path: dataset {path} is not UTF-8 text (byte {exc.start}: "
                           f"{exc.reason})") from None


@contextlib.contextmanager
def _library_errors() -> Iterator[list[str]]:
    """The `datasets` logger's messages while reading, kept instead of printed: its builders
    log the useful detail of a bad file (e.g. `JSON parse error ... in row 10`) on stderr and
    raise a vaguer exception, so both would otherwise reach the user as two lines."""
    import datasets  # noqa: F401  (its first import installs the handler replaced here)

    logger = logging.getLogger("datasets")
    kept: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR:
                kept.append(record.getMessage())

    saved, logger.handlers = logger.handlers, [_Keep()]
    propagate, logger.propagate = logger.propagate, False
    try:
        yield kept
    finally:
        logger.handlers, logger.propagate = saved, propagate


def _one_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0] if text else ""


def load_table(config: DatasetConfig) -> Any:
    """The dataset as a `datasets.Dataset` (in memory). A file the builders cannot read raises
    `DatasetError` with the library's own detail (row, reason) on the same line."""
    with _library_errors() as logged:
        try:
            return _load_table(config)
        except DatasetError:
            raise
        except Exception as exc:
            path = Path(config.path).expanduser()
            first = _one_line(str(exc)) or type(exc).__name__
            if "corresponds to no data" in first:  # the builders' word for a file without rows
                raise DatasetError(f"workload.dataset.path: dataset {path} is empty") from None
            # The most specific line: the builder's logged error (file, row, reason), else
            # the root cause under the library's generic "error while generating" wrapper.
            root: BaseException = exc
            while root.__cause__ is not None:
                root = root.__cause__
            detail = ("; ".join(dict.fromkeys(map(_one_line, logged))) if logged
                      else _one_line(str(root)) or first)
            raise DatasetError(f"workload.dataset.path: cannot read dataset {path}: "
                               f"{detail[:400]}") from None


def _load_table(config: DatasetConfig) -> Any:
    import datasets

    datasets.disable_progress_bars()
    path = Path(config.path).expanduser()
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path), keep_in_memory=True)
        if isinstance(loaded, datasets.DatasetDict):
            if config.split not in loaded:
                raise DatasetError(f"workload.dataset.split: dataset {path} has no split "
                                   f"{config.split!r} (splits: {', '.join(loaded)})")
            loaded = loaded[config.split]
        return loaded
    builder = DATA_FILE_BUILDERS[path.suffix.lower()]
    if builder != "parquet":
        _check_utf8(path)
    with tempfile.TemporaryDirectory(prefix="llm-energy-datasets-") as cache:
        return datasets.load_dataset(builder, data_files=str(path), split="train",
                                     cache_dir=cache, keep_in_memory=True)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise DatasetError(f"{where} is not text (got {type(value).__name__})")
    return value


def _messages_record(index: int, value: Any, where: str) -> ChatRecord:
    if not isinstance(value, list) or not value:
        raise DatasetError(f"{where} is not a non-empty list of messages")
    messages = []
    for turn in value:
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise DatasetError(f"{where}: a message needs 'role' and 'content'")
        messages.append({"role": str(turn["role"]),
                         "content": _text(turn["content"], f"{where} content")})
    reply = None
    if messages[-1]["role"] == "assistant":
        reply = messages.pop()["content"]
    if not messages:
        raise DatasetError(f"{where} has no prompt message before the assistant's reply")
    return ChatRecord(index, messages, reply)


def _sharegpt_record(index: int, value: Any, where: str) -> ChatRecord | None:
    if not isinstance(value, list):
        raise DatasetError(f"{where} is not a list of turns")
    for position, turn in enumerate(value):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise DatasetError(f"{where}: a turn needs 'from' and 'value'")
        if str(turn["from"]).lower() in _HUMAN:
            prompt = _text(turn["value"], f"{where} value")
            reply = None
            if position + 1 < len(value) and str(value[position + 1].get("from", "")).lower() \
                    in _MODEL:
                reply = _text(value[position + 1]["value"], f"{where} value")
            return ChatRecord(index, [{"role": "user", "content": prompt}], reply)
    return None  # no human turn: nothing to send


def read_records(config: DatasetConfig) -> list[ChatRecord]:
    """Every usable record of the dataset, in file order. Records without a human turn
    (ShareGPT) or whose prompt is blank (whitespace only) are skipped; a missing field, a wrong
    type or an empty dataset raise `DatasetError`."""
    table = load_table(config)
    path = config.path
    field = config.field
    columns = list(table.column_names)
    for name in (field, config.reply_field):
        if name is not None and name not in columns:
            key = "reply_field" if name == config.reply_field else "prompt_field"
            raise DatasetError(f"workload.dataset.{key}: dataset {path} has no field {name!r} "
                               f"(fields: {', '.join(columns) or 'none'}): set "
                               f"dataset.{key} or dataset.format")
    if len(table) == 0:
        raise DatasetError(f"workload.dataset.path: dataset {path} is empty")
    prompts = table[field]
    replies = table[config.reply_field] if config.reply_field else [None] * len(prompts)
    records: list[ChatRecord] = []
    for index, (value, reply) in enumerate(zip(prompts, replies)):
        key = "prompt_field" if config.format == "prompt" else "format"
        where = f"workload.dataset.{key}: dataset {path} record {index} field {field!r}"
        if config.format == "prompt":
            text = _text(value, where)
            if reply is not None:
                reply = _text(reply, f"workload.dataset.reply_field: dataset {path} record "
                                     f"{index} field {config.reply_field!r}")
            records.append(ChatRecord(index, [{"role": "user", "content": text}], reply))
        elif config.format == "messages":
            records.append(_messages_record(index, value, where))
        else:
            record = _sharegpt_record(index, value, where)
            if record is not None:
                records.append(record)
    # A prompt of nothing but whitespace asks nothing: skipped like a turn-less record.
    records = [r for r in records if any(m["content"].strip() for m in r.messages)]
    if not records:
        raise DatasetError(f"workload.dataset.format: dataset {path} has no record with a "
                           f"non-blank prompt (format {config.format!r}, field {field!r})")
    return records
