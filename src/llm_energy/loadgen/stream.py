"""Token arrivals from a streamed OpenAI-compatible completion: what each SSE chunk says about
the tokens it carries, reconciled with the server's own count, turned into one arrival time
per token (seconds on `time.perf_counter()`, the clock of the energy windows).

How a chunk's tokens are counted, best first:

1. its token ids (vLLM's `return_token_ids`) or `logprobs.tokens`: exact;
2. per-chunk `usage` (vLLM's `stream_options.continuous_usage_stats`): the growth of the
   cumulative `completion_tokens` since the previous chunk: exact;
3. text only: one token per chunk when that agrees with the final `usage` (counting chunks
   whose text is empty when that is what agrees: a special token the detokenizer strips
   still arrives in its own chunk); otherwise the final `usage` count is shared over the
   chunks (one each, the rest in proportion to their text length) and the request carries a
   `count_note`, which the cycle flags.

A chunk carrying c > 1 tokens gives its last token the chunk's receipt time and spreads the
others evenly over the gap since the previous chunk that carried tokens; in the first such
chunk they share its time (before it came prefill, not decode). Those c - 1 tokens are marked
not observed (`RequestRecord.token_time_observed`), and the cycle is flagged. Hence TTFT is the
first chunk carrying a token, TPOT = (E2E - TTFT) / (n - 1) and ITL has n - 1 gaps with n the
real token count, and steady-state windows count real tokens.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any


class ServerError(RuntimeError):
    """The server answered, with an error (HTTP status or an error event in the stream)."""


@dataclass
class Chunk:
    """One streamed choice: when it was read and what it says about its tokens."""

    t_s: float
    text_chars: int
    #: Tokens counted from the chunk's token ids or logprobs; None when it has neither.
    exact: int | None = None
    ids: list[int] | None = None
    #: Cumulative `completion_tokens` of a `usage` carried by this chunk (continuous stats).
    usage_tokens: int | None = None


@dataclass
class StreamedResponse:
    """What one streamed response said, chunk by chunk."""

    chunks: list[Chunk] = field(default_factory=list)
    prompt_token_ids: list[int] | None = None
    #: `completion_tokens` of the last `usage` the server sent (its own final count).
    usage_tokens: int | None = None
    finish_reason: str | None = None


def _chunk(choice: dict[str, Any], now_s: float, usage_tokens: int | None) -> Chunk:
    text = choice.get("text")
    chunk = Chunk(now_s, len(text) if isinstance(text, str) else 0, usage_tokens=usage_tokens)
    ids = choice.get("token_ids")
    logprobs = choice.get("logprobs")
    if isinstance(ids, list):
        chunk.ids = [int(i) for i in ids]
        chunk.exact = len(ids)
    elif isinstance(logprobs, dict) and isinstance(logprobs.get("tokens"), list):
        chunk.exact = len(logprobs["tokens"])
    return chunk


def parse_event(data: str, stream: StreamedResponse, now_s: float) -> bool:
    """Apply one SSE `data:` payload read at `now_s`; False at `[DONE]`.
    Raises `ServerError` for an error event."""
    if data == "[DONE]":
        return False
    event = json.loads(data)
    if "error" in event and not event.get("choices"):
        error = event["error"]
        raise ServerError(error.get("message", str(error)) if isinstance(error, dict) else str(error))
    usage = event.get("usage")
    usage_tokens = None
    if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
        usage_tokens = int(usage["completion_tokens"])
        stream.usage_tokens = usage_tokens
    for choice in event.get("choices") or []:
        if choice.get("prompt_token_ids") is not None and stream.prompt_token_ids is None:
            stream.prompt_token_ids = [int(i) for i in choice["prompt_token_ids"]]
        stream.chunks.append(_chunk(choice, now_s, usage_tokens))
        if choice.get("finish_reason"):
            stream.finish_reason = choice["finish_reason"]
    return True


@dataclass
class TokenArrivals:
    """One entry per output token: arrival time, whether it was observed on its own."""

    times_s: list[float]
    observed: list[bool]
    token_ids: list[int] | None
    #: token_ids, logprobs, usage-per-chunk, text-chunks or usage-shared
    count_source: str
    #: Why the count is not the stream's own (it disagreed with `usage`), or None.
    note: str | None = None
    #: The stream contradicts itself in a way no count resolves (ids vs usage).
    error: str | None = None


def share_tokens(total: int, weights: list[int]) -> list[int]:
    """`total` tokens over chunks: one to each chunk with a weight (text) when there are
    enough, the rest in proportion to `weights` (text length), largest remainders first; all
    zero weights share evenly."""
    if not weights:
        return []
    if sum(weights) <= 0:
        weights = [1] * len(weights)
    base = [1 if w > 0 else 0 for w in weights]
    if sum(base) > total:
        base = [0] * len(weights)
    rest = total - sum(base)
    scale = sum(weights)
    raw = [rest * w / scale for w in weights]
    extra = [math.floor(r) for r in raw]
    left = rest - sum(extra)
    for i in sorted(range(len(raw)), key=lambda i: extra[i] - raw[i])[:left]:
        extra[i] += 1
    return [b + e for b, e in zip(base, extra)]


def _counts(stream: StreamedResponse) -> tuple[list[int], str, str | None, str | None]:
    """(tokens per chunk, source, note, error)."""
    chunks, final = stream.chunks, stream.usage_tokens
    if any(c.exact is not None for c in chunks) and all(
            c.exact is not None or c.text_chars == 0 for c in chunks):
        counts = [c.exact or 0 for c in chunks]
        source = "token_ids" if any(c.ids is not None for c in chunks) else "logprobs"
        error = None
        if final is not None and final != sum(counts):
            error = f"streamed {sum(counts)} tokens ({source}) but the server reports {final}"
        return counts, source, None, error
    if any(c.usage_tokens is not None for c in chunks) and all(
            c.usage_tokens is not None or c.text_chars == 0 for c in chunks):
        counts, previous = [], 0
        for c in chunks:  # a chunk without usage or text (finish_reason only) carries none
            current = previous if c.usage_tokens is None else int(c.usage_tokens)
            counts.append(max(current - previous, 0))
            previous = max(previous, current)
        note = None
        if final is not None and final != previous:
            note = (f"per-chunk usage adds up to {previous} tokens but the server's final usage "
                    f"says {final}: the per-chunk count is used")
        return counts, "usage-per-chunk", note, None
    with_text = [1 if c.text_chars else 0 for c in chunks]
    if final is None:
        return with_text, "text-chunks", ("no token ids and no usage from the server: one token "
                                          "counted per non-empty text chunk"), None
    if sum(with_text) == final:
        return with_text, "text-chunks", None, None
    if len(chunks) == final:
        return [1] * len(chunks), "text-chunks", None, None
    note = (f"{len(chunks)} streamed chunk(s) ({sum(with_text)} with text) but the server "
            f"reports {final} tokens: its count is used, shared over the chunks by text length")
    return share_tokens(final, [c.text_chars for c in chunks]), "usage-shared", note, None


def token_arrivals(stream: StreamedResponse) -> TokenArrivals:
    """Per-token arrival times for everything the stream said (see the module docstring)."""
    counts, source, note, error = _counts(stream)
    times: list[float] = []
    observed: list[bool] = []
    previous: float | None = None
    for chunk, count in zip(stream.chunks, counts):
        if count <= 0:
            continue
        if previous is None:
            times.extend([chunk.t_s] * count)
        else:
            step = (chunk.t_s - previous) / count
            times.extend(previous + step * (k + 1) for k in range(count - 1))
            times.append(chunk.t_s)
        observed.extend([False] * (count - 1) + [True])
        previous = chunk.t_s
    ids = None
    if source == "token_ids" and all(c.ids is not None or not n for c, n in zip(stream.chunks, counts)):
        ids = [i for c in stream.chunks for i in (c.ids or [])]
    return TokenArrivals(times, observed, ids, source, note, error)
