"""The interface every inference backend implements.

A backend turns a list of prompts (token ids, identical across backends) into one
`RequestRecord` per prompt carrying real per-token timestamps. All times are
`time.perf_counter()` seconds in the measuring process, so that the protocol can line
them up with energy-window edges taken with the same clock.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llm_energy.backends.settings import BackendSettings


@dataclass
class RequestRecord:
    request_id: int
    input_tokens: int
    output_tokens: int
    arrival_s: float
    scheduled_s: float | None = None  # when the engine began processing it (None: unknown)
    token_times_s: list[float] = field(default_factory=list)
    success: bool = True
    error: str | None = None
    output_token_ids: list[int] | None = None
    #: Per token: False when its arrival was not observed on its own (it came in one streamed
    #: chunk with the token after it, so its time is the chunk's or interpolated; see
    #: `llm_energy.loadgen.stream`). None: every time was observed (one token per event).
    token_time_observed: list[bool] | None = None
    #: Set when the streamed token count disagreed with the server's final `usage` (the
    #: usage count is then used and the times spread); flagged per cycle.
    count_note: str | None = None
    #: The request's target output length (exact outputs, EOS ignored) or cap (natural
    #: outputs, EOS allowed), tokens; set by `check_output_lengths`.
    target_output_tokens: int | None = None

    @property
    def first_token_s(self) -> float | None:
        return self.token_times_s[0] if self.token_times_s else None

    @property
    def finish_s(self) -> float | None:
        return self.token_times_s[-1] if self.token_times_s else None


def per_request(output_tokens: int | Sequence[int], count: int) -> list[int]:
    """Each of `count` requests' output target or cap: one number for all, or one per request."""
    if isinstance(output_tokens, int):
        return [int(output_tokens)] * count
    targets = [int(n) for n in output_tokens]
    if len(targets) != count:
        raise ValueError(f"{len(targets)} output lengths for {count} prompts")
    return targets


def check_output_lengths(records: list[RequestRecord], output_tokens: int | Sequence[int],
                         exact: bool, who: str, detail: str = "") -> None:
    """Record each request's target (or cap) and fail every successful record whose length
    breaks it, with the reason: with `exact` outputs (EOS ignored) anything but the target
    (e.g. a context limit that stopped generation early); with natural outputs (EOS allowed)
    no token at all or more than the cap."""
    for r, target in zip(records, per_request(output_tokens, len(records))):
        r.target_output_tokens = target
        if not r.success:
            continue
        if exact and r.output_tokens != target:
            r.success = False
            r.error = f"{who} returned {r.output_tokens} tokens, expected {target}{detail}"
        elif not exact and not 1 <= r.output_tokens <= target:
            r.success = False
            r.error = (f"{who} returned {r.output_tokens} tokens, expected 1 to {target} "
                       f"(the cap){detail}")


def fail_short_records(records: list[RequestRecord], expected: int | Sequence[int], who: str,
                       detail: str = "") -> None:
    """`check_output_lengths` for exact outputs: every successful record with other than its
    expected number of tokens fails."""
    check_output_lengths(records, expected, True, who, detail)


@dataclass
class LoadInfo:
    """What loading the model cost; reported apart from inference."""

    duration_s: float
    device: str
    dtype: str
    parameters: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class BackendUnavailable(RuntimeError):
    """The backend's package or environment is missing; the message says what to install."""


class Backend(abc.ABC):
    """One inference engine, configured for one cell.

    `settings` is the cell's backend-specific axes (batch size, dtype, ...) as a plain dict,
    `model_path` a local directory with `config.json` and a tokenizer.
    """

    name: str = ""
    #: Its settings class (the spec's `config`): unset settings take its defaults.
    config: type[BackendSettings] | None = None

    def __init__(self, model_path: str, settings: dict[str, Any], device: str) -> None:
        self.model_path = model_path
        self.settings = {**self.config.cell_defaults(), **settings} if self.config else settings
        self.device = device

    @abc.abstractmethod
    def load(self) -> LoadInfo: ...

    @abc.abstractmethod
    def generate(self, prompts: list[list[int]], output_tokens: int | Sequence[int],
                 exact: bool = True) -> list[RequestRecord]:
        """Run all prompts; `output_tokens` is one number for all or one per prompt
        (`per_request`). `exact` (output_policy fixed/dataset): EOS ignored, each request
        produces exactly its number of tokens. Not `exact` (natural): EOS allowed, the number
        is the request's cap; the tokens counted end at the first EOS (included) or the cap.

        The backend schedules them with its own batching limit (`batch_size` or
        `max_num_seqs`); every record's `arrival_s` is when the request was handed to it, and
        `check_output_lengths` sets its target and fails a request with a wrong length.
        """

    #: The cell's `workload` and `measurement` sections, set by the protocol before `load()`
    #: (server backends read the arrival process and the telemetry rate from them).
    workload: dict[str, Any] | None = None
    measurement: dict[str, Any] | None = None

    def telemetry(self) -> list[Any]:
        """Backend-side time series (dataclass rows with `t_s` on the perf_counter clock and
        a `device`), merged into timeseries.parquet; e.g. a server's Prometheus metrics."""
        return []

    def cycle_columns(self, start_s: float, end_s: float) -> dict[str, Any]:
        """Extra runs.parquet columns for the cycle [start_s, end_s] (e.g. average batch size)."""
        return {}

    def cycle_warnings(self, cycle: int, start_s: float, end_s: float) -> list[str]:
        """Validity flags of the backend's own telemetry for the cycle [start_s, end_s]."""
        return []

    def synchronize(self) -> None:
        """Block until queued device work is done (window edges)."""

    def close(self) -> None:
        """Release the model and any child process."""
