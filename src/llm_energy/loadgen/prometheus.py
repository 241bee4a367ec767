"""Prometheus `/metrics` of a server: parsing, a background scraper, and per-cycle columns and
flags from its samples (requests running and waiting, KV-cache use) for the time series."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from llm_energy.loadgen.client import is_loopback

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
    A failed scrape is a gap, not an error (the server may be busy or going away). A sample
    is stamped (receipt of the answer) and stored under one lock, so `snapshot()` taken after
    a moment holds every sample stamped before it."""

    def __init__(self, url: str, period_s: float) -> None:
        self.url = url
        self.period_s = period_s
        self.samples: list[ServerSample] = []
        self.errors = 0
        self._lock = threading.Lock()
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
        # t_s is stamped by `_store`, when the sample joins the list.
        return ServerSample(0.0, "server", values.get("requests_running"),
                            values.get("requests_waiting"), None if frac is None else 100.0 * frac)

    def _store(self, sample: ServerSample) -> None:
        with self._lock:
            sample.t_s = time.perf_counter()
            self.samples.append(sample)

    def snapshot(self) -> list[ServerSample]:
        """The samples so far, including any stamped before this call."""
        with self._lock:
            return list(self.samples)

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=max(self.period_s, 1.0), trust_env=not is_loopback(self.url)) as client:
            next_t = time.perf_counter()
            while not self._stop.is_set():
                try:
                    sample = self.scrape_once(client)
                    if sample is not None:
                        self._store(sample)
                    else:
                        self.errors += 1
                except Exception:
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


def _scrapes_inside(samples: list[ServerSample], start_s: float, end_s: float) -> list[ServerSample]:
    return [s for s in samples if start_s <= s.t_s <= end_s]


def _starved(got: int, start_s: float, end_s: float, period_s: float) -> float | None:
    """The scrapes expected in [start_s, end_s] when fewer than `SCRAPE_COVERAGE_MIN` of them
    came back, else None (a window under two periods cannot be judged: None)."""
    expected = (end_s - start_s) / period_s
    if expected < 2 or got >= SCRAPE_COVERAGE_MIN * expected:
        return None
    return expected


def scrape_coverage_warning(samples: list[ServerSample], cycle: int, start_s: float,
                            end_s: float, period_s: float) -> str | None:
    """A flag when the server answered `/metrics` far less often than asked during a cycle:
    a server too busy to report (e.g. sharing 2 CPU cores with its engine) answers late, so
    its few answers describe the moments it was free, not the cycle; the cycle's gauge
    columns are then null (`server_cycle_columns`)."""
    got = len(_scrapes_inside(samples, start_s, end_s))
    expected = _starved(got, start_s, end_s, period_s)
    if expected is None:
        return None
    return (f"server /metrics answered {got} time(s) in cycle {cycle} against ~{expected:.0f} "
            f"asked ({1 / period_s:g} Hz): the server was too busy to report, so the cycle's "
            "server_* gauge columns are null (its few answers describe only the moments it "
            "was free)")


def server_cycle_columns(samples: list[ServerSample], start_s: float, end_s: float,
                         period_s: float | None = None) -> dict[str, Any]:
    """Per-cycle summary of scraped server metrics: mean requests running (the average batch
    size the engine saw) and KV-cache use, over the scrapes inside the cycle. With the scrape
    period given, a cycle the server was too busy to report on (`scrape_coverage_warning`)
    gets null gauge columns rather than values from its idle moments."""
    inside = _scrapes_inside(samples, start_s, end_s)
    if period_s is not None and _starved(len(inside), start_s, end_s, period_s) is not None:
        inside_gauges: list[ServerSample] = []
    else:
        inside_gauges = inside
    running = [s.requests_running for s in inside_gauges if s.requests_running is not None]
    kv = [s.kv_cache_usage_pct for s in inside_gauges if s.kv_cache_usage_pct is not None]
    return {
        "server_metric_samples": len(inside),
        "server_avg_batch_size": sum(running) / len(running) if running else None,
        "server_max_batch_size": max(running) if running else None,
        "server_kv_cache_usage_pct_mean": sum(kv) / len(kv) if kv else None,
        "server_kv_cache_usage_pct_max": max(kv) if kv else None,
    }
