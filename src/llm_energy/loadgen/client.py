"""Load generator for server backends: OpenAI-compatible `/v1/completions`, streamed.

Arrivals are a closed loop (at most `concurrency` requests in flight, the next one sent as soon
as one finishes) or a Poisson process at `request_rate_per_s` (exponential gaps from a seeded
generator, so every cell of a study sees the same schedule). Prompts are sent as token-id
lists, the same ids every backend gets, each with its own `max_tokens`. Under exact output
policies (fixed, dataset) vLLM's request extensions `min_tokens` and `ignore_eos` make the
length exact; under `natural` they are not sent (EOS ends the output, `max_tokens` is the
cap). `return_token_ids` makes every
streamed chunk carry its token ids and `continuous_usage_stats` its running token count, so
tokens are counted from what the server says, never guessed from text (`loadgen.stream`).

Each streamed chunk is stamped with `time.perf_counter()` when its line is read, the clock the
protocol uses for energy windows. Only asyncio and httpx (in every environment of this
project) are used. A server's `/metrics` is scraped by `loadgen.prometheus`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from llm_energy.backends.base import RequestRecord, per_request
from llm_energy.loadgen.arrivals import poisson_offsets_s, repeat_schedule
from llm_energy.loadgen.stream import (
    ServerError,
    StreamedResponse,
    parse_event,
    token_arrivals,
)

_CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class LoadSpec:
    """How requests arrive (the `workload` section's arrival keys)."""

    arrival: str = "closed"
    concurrency: int | None = None
    request_rate_per_s: float | None = None
    seed: int = 0
    timeout_s: float = 600.0
    #: Send times from the workload file (`loadgen.arrivals`), seconds after the start; used
    #: for every arrival but `closed`. Without them, `poisson` draws its own from `seed`.
    offsets_s: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.arrival not in ("closed", "poisson", "gamma", "constant", "trace"):
            raise ValueError(f"unknown arrival {self.arrival!r}")
        if self.arrival == "poisson" and self.offsets_s is None \
                and not (self.request_rate_per_s or 0) > 0:
            raise ValueError("poisson arrivals need request_rate_per_s > 0")
        if self.arrival not in ("closed", "poisson") and self.offsets_s is None:
            raise ValueError(f"arrival {self.arrival!r} needs the offsets of the workload file")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")

    @classmethod
    def from_workload(cls, workload: dict[str, Any] | None) -> LoadSpec:
        w = workload or {}
        return cls(arrival=w.get("arrival", "closed"), concurrency=w.get("concurrency"),
                   request_rate_per_s=w.get("request_rate_per_s"), seed=int(w.get("seed", 0)),
                   timeout_s=float(w.get("request_timeout_s", 600.0)),
                   offsets_s=(tuple(w["arrival_offsets_s"]) if w.get("arrival_offsets_s")
                              is not None else None))

    def in_flight_limit(self, num_requests: int) -> int:
        """Most requests the client keeps open at once in a closed loop."""
        return min(self.concurrency or num_requests, num_requests)


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible server. `base_url` ends in `/v1` (or wherever `/completions` is)."""

    base_url: str
    model: str
    api_key: str | None = None
    #: vLLM's request extensions (min_tokens, ignore_eos, return_token_ids). Servers that reject
    #: unknown fields need False; output lengths are then whatever the server produces.
    extensions: bool = True

    @property
    def completions_url(self) -> str:
        return self.base_url.rstrip("/") + "/completions"

    @property
    def root_url(self) -> str:
        """Scheme and host: where `/health` and `/metrics` live on vLLM."""
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.netloc}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def completion_payload(endpoint: Endpoint, prompt_ids: list[int], max_tokens: int,
                       exact: bool = True) -> dict[str, Any]:
    """The request body: token-id prompt, greedy, streamed; `max_tokens` is the cap, made the
    exact length (`min_tokens`, `ignore_eos`) for `exact` outputs where the server honours
    vLLM's extensions."""
    payload: dict[str, Any] = {
        "model": endpoint.model,
        "prompt": list(prompt_ids),
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if endpoint.extensions:
        if exact:
            payload.update(min_tokens=max_tokens, ignore_eos=True)
        payload.update(return_token_ids=True, skip_special_tokens=False)
        # Every chunk's cumulative token count: exact counts even without token ids.
        payload["stream_options"]["continuous_usage_stats"] = True
    return payload


@dataclass
class LoadResult:
    records: list[RequestRecord]
    max_in_flight: int
    start_s: float
    end_s: float


async def _one_request(client: Any, endpoint: Endpoint, prompt: list[int], max_tokens: int,
                       exact: bool, record: RequestRecord) -> None:
    clock = time.perf_counter
    stream = StreamedResponse()
    record.arrival_s = clock()
    try:
        async with client.stream("POST", endpoint.completions_url,
                                 json=completion_payload(endpoint, prompt, max_tokens, exact),
                                 headers=endpoint.headers()) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace").strip()
                raise ServerError(f"HTTP {response.status_code}: {body[:300]}")
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments, event names
                if not parse_event(line[5:].strip(), stream, clock()):
                    break
    except Exception as exc:
        record.success = False
        text = str(exc) if isinstance(exc, ServerError) else f"{type(exc).__name__}: {exc}"
        record.error = text.strip()[:500]
    # Without the extensions an exact length cannot be asked for: not checked then.
    finish_record(record, stream, prompt, max_tokens,
                  None if exact and not endpoint.extensions else exact)


def finish_record(record: RequestRecord, stream: StreamedResponse, prompt: list[int],
                  target: int, exact: bool | None) -> None:
    """Fill `record` from what the stream said; a request the stream contradicts (prompt ids
    not the ones sent, ids against usage) fails with the reason, as does one whose length
    breaks its `target`: other than `target` tokens when `exact` (the server was asked for
    exactly that many), none or more than `target` (the cap) when `exact` is False; None:
    the length is not checked."""
    record.target_output_tokens = target
    arrivals = token_arrivals(stream)
    record.token_times_s = arrivals.times_s
    record.token_time_observed = None if all(arrivals.observed) else arrivals.observed
    record.output_token_ids = arrivals.token_ids
    record.output_tokens = len(arrivals.times_s)
    record.count_note = arrivals.note
    if not record.success:
        return
    problem = None
    if stream.prompt_token_ids is not None and stream.prompt_token_ids != list(prompt):
        problem = (f"the server's prompt token ids differ from the ones sent "
                   f"({len(stream.prompt_token_ids)} vs {len(prompt)} tokens)")
    elif arrivals.error is not None:
        problem = arrivals.error
    elif exact and record.output_tokens != target:
        problem = (f"server returned {record.output_tokens} tokens, expected {target} "
                   f"(finish_reason {stream.finish_reason!r})")
    elif exact is False and not 1 <= record.output_tokens <= target:
        problem = (f"server returned {record.output_tokens} tokens, expected 1 to {target} "
                   f"(the cap; finish_reason {stream.finish_reason!r})")
    if problem is not None:
        record.success, record.error = False, problem


async def _run(endpoint: Endpoint, prompts: list[list[int]], max_tokens: int | Sequence[int],
               spec: LoadSpec, exact: bool) -> LoadResult:
    import httpx

    targets = per_request(max_tokens, len(prompts))
    records = [RequestRecord(request_id=i, input_tokens=len(p), output_tokens=0, arrival_s=0.0)
               for i, p in enumerate(prompts)]
    limit = spec.in_flight_limit(len(prompts)) if spec.arrival == "closed" else len(prompts)
    in_flight = 0
    max_in_flight = 0
    # Proxies from the environment are for the outside world, never for this host's server.
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(spec.timeout_s, connect=_CONNECT_TIMEOUT_S),
        limits=httpx.Limits(max_connections=max(limit, 1), max_keepalive_connections=max(limit, 1)),
        trust_env=not is_loopback(endpoint.base_url),
    ) as client:
        gate = asyncio.Semaphore(limit)
        start_s = time.perf_counter()
        offsets: list[float] | None = None
        if spec.arrival != "closed":
            offsets = repeat_schedule(spec.offsets_s, len(prompts)) if spec.offsets_s else \
                poisson_offsets_s(len(prompts), spec.request_rate_per_s or 1.0, spec.seed)

        async def run_one(index: int) -> None:
            nonlocal in_flight, max_in_flight
            if offsets is not None:
                delay = start_s + offsets[index] - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            async with gate:
                in_flight += 1
                max_in_flight = max(max_in_flight, in_flight)
                try:
                    await _one_request(client, endpoint, prompts[index], targets[index], exact,
                                       records[index])
                finally:
                    in_flight -= 1

        # Closed loop: tasks are created in prompt order and the semaphore is FIFO, so request
        # i+limit starts when the first of the earlier ones finishes.
        await asyncio.gather(*(run_one(i) for i in range(len(prompts))))
        end_s = time.perf_counter()
    return LoadResult(records, max_in_flight, start_s, end_s)


def run_load(endpoint: Endpoint, prompts: list[list[int]], max_tokens: int | Sequence[int],
             spec: LoadSpec, exact: bool = True) -> LoadResult:
    """Send every prompt, wait for every response; one record per prompt, in prompt order.
    `max_tokens`: one number or one per prompt; `exact`: see `completion_payload`."""
    return asyncio.run(_run(endpoint, prompts, max_tokens, spec, exact))
