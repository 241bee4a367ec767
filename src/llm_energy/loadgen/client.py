"""Load generator for server backends: OpenAI-compatible `/v1/completions`, streamed.

Arrivals are a closed loop (at most `concurrency` requests in flight, the next one sent as soon
as one finishes) or a Poisson process at `request_rate_per_s` (exponential gaps from a seeded
generator, so every cell of a study sees the same schedule). Prompts are sent as token-id
lists, the same ids every backend gets, with exactly `max_tokens` out: vLLM's request
extensions `min_tokens` and `ignore_eos` make the length exact, `return_token_ids` makes every
streamed chunk carry its token ids, so tokens are counted, not guessed from text.

Each streamed chunk is stamped with `time.perf_counter()` when its line is read, the clock the
protocol uses for energy windows. Only asyncio and httpx (in every environment of this
project) are used.

`MetricsScraper` polls a Prometheus `/metrics` endpoint in a background thread (requests
running and waiting, KV-cache use) for the time series.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from llm_energy.backends.base import RequestRecord

_CONNECT_TIMEOUT_S = 10.0


class ServerError(RuntimeError):
    """The server answered, with an error (HTTP status or an error event in the stream)."""


@dataclass(frozen=True)
class LoadSpec:
    """How requests arrive (the `workload` section's arrival keys)."""

    arrival: str = "closed"
    concurrency: int | None = None
    request_rate_per_s: float | None = None
    seed: int = 0
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.arrival not in ("closed", "poisson"):
            raise ValueError(f"arrival must be 'closed' or 'poisson', not {self.arrival!r}")
        if self.arrival == "poisson" and not (self.request_rate_per_s or 0) > 0:
            raise ValueError("poisson arrivals need request_rate_per_s > 0")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")

    @classmethod
    def from_workload(cls, workload: dict[str, Any] | None) -> LoadSpec:
        w = workload or {}
        return cls(arrival=w.get("arrival", "closed"), concurrency=w.get("concurrency"),
                   request_rate_per_s=w.get("request_rate_per_s"), seed=int(w.get("seed", 0)),
                   timeout_s=float(w.get("request_timeout_s", 600.0)))

    def in_flight_limit(self, num_requests: int) -> int:
        """Most requests the client keeps open at once in a closed loop."""
        return min(self.concurrency or num_requests, num_requests)


def poisson_offsets_s(num_requests: int, rate_per_s: float, seed: int) -> list[float]:
    """Send times relative to the start: the first request at 0, then exponential gaps of mean
    1/rate. The same seed gives the same schedule."""
    rng = random.Random(seed)
    offsets, t = [], 0.0
    for index in range(num_requests):
        if index:
            t += rng.expovariate(rate_per_s)
        offsets.append(t)
    return offsets


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


def completion_payload(endpoint: Endpoint, prompt_ids: list[int], max_tokens: int) -> dict[str, Any]:
    """The request body: token-id prompt, greedy, streamed, exact output length where the
    server honours vLLM's extensions."""
    payload: dict[str, Any] = {
        "model": endpoint.model,
        "prompt": list(prompt_ids),
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if endpoint.extensions:
        payload.update(min_tokens=max_tokens, ignore_eos=True, return_token_ids=True,
                       skip_special_tokens=False)
    return payload


@dataclass
class _Stream:
    """What one streamed response said, chunk by chunk."""

    token_times_s: list[float] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    ids_streamed: bool = True
    prompt_token_ids: list[int] | None = None
    usage_completion_tokens: int | None = None
    finish_reason: str | None = None


def chunk_tokens(choice: dict[str, Any]) -> tuple[int, list[int] | None]:
    """Tokens in one streamed choice: from its token ids (vLLM `return_token_ids`), else its
    logprobs' tokens, else one per non-empty text delta (servers that stream token by token).
    Returns (count, ids or None)."""
    ids = choice.get("token_ids")
    if isinstance(ids, list):
        return len(ids), [int(i) for i in ids]
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict) and isinstance(logprobs.get("tokens"), list):
        return len(logprobs["tokens"]), None
    return (1 if choice.get("text") else 0), None


def parse_event(data: str, stream: _Stream, now_s: float) -> bool:
    """Apply one SSE `data:` payload; False at `[DONE]`."""
    if data == "[DONE]":
        return False
    event = json.loads(data)
    if "error" in event and not event.get("choices"):
        error = event["error"]
        raise ServerError(error.get("message", str(error)) if isinstance(error, dict) else str(error))
    for choice in event.get("choices") or []:
        if choice.get("prompt_token_ids") is not None and stream.prompt_token_ids is None:
            stream.prompt_token_ids = [int(i) for i in choice["prompt_token_ids"]]
        count, ids = chunk_tokens(choice)
        if ids is None:
            stream.ids_streamed = stream.ids_streamed and count == 0
        else:
            stream.token_ids.extend(ids)
        stream.token_times_s.extend([now_s] * count)
        if choice.get("finish_reason"):
            stream.finish_reason = choice["finish_reason"]
    usage = event.get("usage")
    if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
        stream.usage_completion_tokens = int(usage["completion_tokens"])
    return True


@dataclass
class LoadResult:
    records: list[RequestRecord]
    max_in_flight: int
    start_s: float
    end_s: float


async def _one_request(client: Any, endpoint: Endpoint, index: int, prompt: list[int],
                       max_tokens: int, record: RequestRecord) -> None:
    clock = time.perf_counter
    stream = _Stream()
    record.arrival_s = clock()
    try:
        async with client.stream("POST", endpoint.completions_url,
                                 json=completion_payload(endpoint, prompt, max_tokens),
                                 headers=endpoint.headers()) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace").strip()
                raise ServerError(f"HTTP {response.status_code}: {body[:300]}")
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments, event names
                if not parse_event(line[5:].strip(), stream, clock()):
                    break
    except Exception as exc:  # noqa: BLE001 - a failed request is a row, not a crash
        record.success = False
        text = str(exc) if isinstance(exc, ServerError) else f"{type(exc).__name__}: {exc}"
        record.error = text.strip()[:500]
    record.token_times_s = stream.token_times_s
    record.output_token_ids = stream.token_ids if stream.ids_streamed else None
    counted = len(stream.token_times_s)
    record.output_tokens = counted
    if not record.success:
        return
    if stream.prompt_token_ids is not None and stream.prompt_token_ids != list(prompt):
        record.success = False
        record.error = (f"the server's prompt token ids differ from the ones sent "
                        f"({len(stream.prompt_token_ids)} vs {len(prompt)} tokens)")
    elif stream.usage_completion_tokens is not None and stream.usage_completion_tokens != counted:
        # A server that packs several tokens into one text chunk: its own count is exact, the
        # chunk times are then per chunk, not per token.
        record.output_tokens = stream.usage_completion_tokens
        if stream.ids_streamed:
            record.success = False
            record.error = (f"streamed {counted} token ids but the server reports "
                            f"{stream.usage_completion_tokens} completion tokens")
    if record.success and endpoint.extensions and record.output_tokens != max_tokens:
        record.success = False
        record.error = (f"server returned {record.output_tokens} tokens, expected {max_tokens} "
                        f"(finish_reason {stream.finish_reason!r})")


async def _run(endpoint: Endpoint, prompts: list[list[int]], max_tokens: int,
               spec: LoadSpec) -> LoadResult:
    import httpx

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
        offsets = (poisson_offsets_s(len(prompts), spec.request_rate_per_s or 1.0, spec.seed)
                   if spec.arrival == "poisson" else None)

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
                    await _one_request(client, endpoint, index, prompts[index], max_tokens,
                                       records[index])
                finally:
                    in_flight -= 1

        # Closed loop: tasks are created in prompt order and the semaphore is FIFO, so request
        # i+limit starts when the first of the earlier ones finishes.
        await asyncio.gather(*(run_one(i) for i in range(len(prompts))))
        end_s = time.perf_counter()
    return LoadResult(records, max_in_flight, start_s, end_s)


def run_load(endpoint: Endpoint, prompts: list[list[int]], max_tokens: int,
             spec: LoadSpec) -> LoadResult:
    """Send every prompt, wait for every response; one record per prompt, in prompt order."""
    return asyncio.run(_run(endpoint, prompts, max_tokens, spec))


# ---------------------------------------------------------------- Prometheus


#: Metric names per server family -> our column. Values are summed over label sets (engines).
PROMETHEUS_METRICS = {
    "vllm:num_requests_running": "requests_running",
    "vllm:num_requests_waiting": "requests_waiting",
    "vllm:kv_cache_usage_perc": "kv_cache_usage_frac",
    "sglang:num_running_reqs": "requests_running",
    "sglang:num_queue_reqs": "requests_waiting",
    "sglang:token_usage": "kv_cache_usage_frac",
}


_SAMPLE_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{[^}]*\})?\s+(\S+)")


def parse_prometheus(text: str, names: dict[str, str] = PROMETHEUS_METRICS) -> dict[str, float]:
    """The wanted gauges from Prometheus text exposition, summed over label sets."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE_LINE.match(line)
        if match is None:
            continue  # comments (# HELP, # TYPE), blank lines
        column = names.get(match.group(1))
        if column is None:
            continue
        try:
            value = float(match.group(2))
        except ValueError:
            continue
        values[column] = values.get(column, 0.0) + value
    return values


@dataclass
class ServerSample:
    """One scrape of a server's /metrics (a timeseries.parquet row with device 'server')."""

    t_s: float
    device: str
    requests_running: float | None
    requests_waiting: float | None
    kv_cache_usage_pct: float | None


class MetricsScraper:
    """Polls `url` every `period_s` in a daemon thread; keeps one `ServerSample` per scrape.
    A failed scrape is a gap, not an error (the server may be busy or going away)."""

    def __init__(self, url: str, period_s: float) -> None:
        self.url = url
        self.period_s = period_s
        self.samples: list[ServerSample] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llm-energy-metrics", daemon=True)

    def scrape_once(self, client: Any) -> ServerSample | None:
        response = client.get(self.url)
        if response.status_code != 200:
            return None
        values = parse_prometheus(response.text)
        if not values:
            return None
        frac = values.get("kv_cache_usage_frac")
        return ServerSample(time.perf_counter(), "server", values.get("requests_running"),
                            values.get("requests_waiting"), None if frac is None else 100.0 * frac)

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=max(self.period_s, 1.0), trust_env=not is_loopback(self.url)) as client:
            next_t = time.perf_counter()
            while not self._stop.is_set():
                try:
                    sample = self.scrape_once(client)
                    if sample is not None:
                        self.samples.append(sample)
                    else:
                        self.errors += 1
                except Exception:  # noqa: BLE001 - a gap, flagged by its absence
                    self.errors += 1
                next_t += self.period_s
                delay = next_t - time.perf_counter()
                if delay < 0:
                    next_t, delay = time.perf_counter(), 0.0
                self._stop.wait(delay)

    def start(self) -> MetricsScraper:
        self._thread.start()
        return self

    def stop(self) -> list[ServerSample]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        return self.samples


#: Share of the expected scrapes a cycle must get before its server_* columns are trusted.
SCRAPE_COVERAGE_MIN = 0.5


def scrape_coverage_warning(samples: list[ServerSample], cycle: int, start_s: float,
                            end_s: float, period_s: float) -> str | None:
    """A flag when the server answered `/metrics` far less often than asked during a cycle:
    a server too busy to report (e.g. sharing 2 CPU cores with its engine) answers late, so
    its few answers describe the moments it was free, not the cycle."""
    expected = (end_s - start_s) / period_s
    if expected < 2:
        return None  # a cycle this short cannot be covered at this rate; nothing to judge
    got = sum(1 for s in samples if start_s <= s.t_s <= end_s)
    if got >= SCRAPE_COVERAGE_MIN * expected:
        return None
    return (f"server /metrics answered {got} time(s) in cycle {cycle} against ~{expected:.0f} "
            f"asked ({1 / period_s:g} Hz): the server was too busy to report, so the server_* "
            "columns of this cycle describe only the moments it answered")


def server_cycle_columns(samples: list[ServerSample], start_s: float, end_s: float) -> dict[str, Any]:
    """Per-cycle summary of scraped server metrics: mean requests running (the average batch
    size the engine saw) and KV-cache use, over the scrapes inside the cycle."""
    inside = [s for s in samples if start_s <= s.t_s <= end_s]
    running = [s.requests_running for s in inside if s.requests_running is not None]
    kv = [s.kv_cache_usage_pct for s in inside if s.kv_cache_usage_pct is not None]
    return {
        "server_metric_samples": len(inside),
        "server_avg_batch_size": sum(running) / len(running) if running else None,
        "server_max_batch_size": max(running) if running else None,
        "server_kv_cache_usage_pct_mean": sum(kv) / len(kv) if kv else None,
        "server_kv_cache_usage_pct_max": max(kv) if kv else None,
    }
