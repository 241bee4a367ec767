"""Load generator and openai-server backend against a real HTTP server on 127.0.0.1
(tests/fakes/openai_server.py): arrivals, streaming, token counting, failures, /metrics."""

from __future__ import annotations

import statistics

import pytest

from fakes.openai_server import FakeServer
from llm_energy.backends.openai_server import OpenAIServerBackend
from llm_energy.loadgen import (Endpoint, LoadSpec, MetricsScraper, parse_prometheus,
                                poisson_offsets_s, run_load, server_cycle_columns)

PROMPTS = [[10 + i, 11, 12, 13] for i in range(6)]


def test_closed_loop_keeps_concurrency_and_counts_tokens_exactly():
    with FakeServer(token_delay_s=0.01) as server:
        result = run_load(Endpoint(server.base_url, "fake-model"), PROMPTS, 5,
                          LoadSpec(concurrency=2))
    assert server.max_in_flight == 2 and result.max_in_flight == 2
    assert len(result.records) == len(PROMPTS)
    for prompt, record, sent in zip(PROMPTS, result.records, server.requests_by_prompt(PROMPTS)):
        assert record.success, record.error
        assert record.input_tokens == 4 and record.output_tokens == 5
        assert record.output_token_ids == [(prompt[0] + j) % 97 for j in range(5)]
        times = record.token_times_s
        assert len(times) == 5 and all(b > a for a, b in zip(times, times[1:]))
        assert record.arrival_s < times[0]
        body = sent["body"]
        assert body["prompt"] == prompt  # token ids, not text
        assert body["max_tokens"] == body["min_tokens"] == 5 and body["ignore_eos"] is True
        assert body["stream"] is True and body["temperature"] == 0.0
    # Closed loop: the third request is sent only when one of the first two has finished.
    third = result.records[2].arrival_s
    assert third >= min(result.records[0].finish_s, result.records[1].finish_s)


def test_no_concurrency_limit_sends_everything_at_once():
    with FakeServer(token_delay_s=0.02) as server:
        result = run_load(Endpoint(server.base_url, "fake-model"), PROMPTS, 4, LoadSpec())
    assert server.max_in_flight == len(PROMPTS) == result.max_in_flight
    assert all(r.success and r.output_tokens == 4 for r in result.records)


def test_poisson_schedule_is_seeded_and_has_the_asked_rate():
    assert poisson_offsets_s(50, 5.0, seed=3) == poisson_offsets_s(50, 5.0, seed=3)
    assert poisson_offsets_s(50, 5.0, seed=3) != poisson_offsets_s(50, 5.0, seed=4)
    offsets = poisson_offsets_s(4000, 5.0, seed=1)
    gaps = [b - a for a, b in zip(offsets, offsets[1:])]
    assert offsets[0] == 0.0 and statistics.mean(gaps) == pytest.approx(0.2, rel=0.06)
    # Exponential gaps: standard deviation equals the mean.
    assert statistics.stdev(gaps) == pytest.approx(0.2, rel=0.1)


def test_poisson_arrivals_follow_the_schedule():
    spec = LoadSpec(arrival="poisson", request_rate_per_s=10.0, seed=7)
    with FakeServer(token_delay_s=0.001) as server:
        result = run_load(Endpoint(server.base_url, "fake-model"), PROMPTS, 3, spec)
    expected = poisson_offsets_s(len(PROMPTS), 10.0, 7)
    sent = [r.arrival_s - result.start_s for r in result.records]
    for want, got in zip(expected, sent):
        assert got == pytest.approx(want, abs=0.05)
    assert all(r.success for r in result.records)


def test_http_errors_become_failed_requests_and_a_failed_generate():
    with FakeServer(status=500) as server:
        result = run_load(Endpoint(server.base_url, "fake-model"), PROMPTS[:2], 3, LoadSpec())
        assert [r.success for r in result.records] == [False, False]
        assert "HTTP 500" in result.records[0].error
        backend = OpenAIServerBackend("unused", {"base_url": server.base_url}, "cpu")
        backend.load()
        try:
            with pytest.raises(RuntimeError, match="every request .* failed: HTTP 500"):
                backend.generate(PROMPTS[:2], 3)
        finally:
            backend.close()


def test_server_without_token_ids_counts_from_usage():
    """A server without vLLM's extensions packs two tokens per text chunk: the count comes
    from its usage chunk, the times are per chunk."""
    with FakeServer(ids=False, tokens_per_chunk=2) as server:
        result = run_load(Endpoint(server.base_url, "fake-model", extensions=False),
                          PROMPTS[:2], 6, LoadSpec())
        assert "min_tokens" not in server.requests[0]["body"]
    for record in result.records:
        assert record.success and record.output_tokens == 6
        assert len(record.token_times_s) == 3 and record.output_token_ids is None


def test_prometheus_parsing_sums_engines_and_ignores_other_metrics():
    text = ('# HELP vllm:num_requests_running x\n# TYPE vllm:num_requests_running gauge\n'
            'vllm:num_requests_running{engine="0",model_name="m"} 3.0\n'
            'vllm:num_requests_running{engine="1",model_name="m"} 2.0\n'
            'vllm:kv_cache_usage_perc{engine="0"} 0.25\n'
            'vllm:num_requests_waiting 1\n'
            'vllm:time_to_first_token_seconds_bucket{le="0.1"} 7\n')
    assert parse_prometheus(text) == {"requests_running": 5.0, "requests_waiting": 1.0,
                                      "kv_cache_usage_frac": 0.25}


def test_openai_backend_scrapes_metrics_sends_key_and_finds_the_model(monkeypatch):
    monkeypatch.setenv("TEST_OPENAI_KEY", "sk-test-123")
    settings = {"base_url": None, "api_key_env": "TEST_OPENAI_KEY", "trust_remote_code": False}
    with FakeServer(token_delay_s=0.02) as server:
        backend = OpenAIServerBackend("unused", {**settings, "base_url": server.base_url}, "cpu")
        backend.workload = {"arrival": "closed", "concurrency": 3, "seed": 0}
        backend.measurement = {"sampler_hz": 50.0}
        info = backend.load()
        try:
            records = backend.generate(PROMPTS, 8)
        finally:
            backend.close()
    assert info.extra["served_model"] == "fake-model"
    assert "sk-test-123" not in repr(info)  # the key never reaches provenance
    assert {r["authorization"] for r in server.requests} == {"Bearer sk-test-123"}
    assert all(r["body"]["model"] == "fake-model" for r in server.requests)
    assert all(r.success and r.output_tokens == 8 for r in records)
    assert server.max_in_flight == 3
    samples = backend.telemetry()
    assert samples and {s.device for s in samples} == {"server"}
    start, end = records[0].arrival_s, max(r.finish_s for r in records)
    columns = server_cycle_columns(samples, start, end)
    # The server's own in-flight count, as scraped: between 1 and the concurrency.
    assert columns["server_max_batch_size"] == 3
    assert 1.0 <= columns["server_avg_batch_size"] <= 3.0


def test_openai_backend_reports_missing_key_and_unreachable_server(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    backend = OpenAIServerBackend("unused", {"base_url": "http://127.0.0.1:9/v1",
                                             "api_key_env": "NO_SUCH_KEY_VAR"}, "cpu")
    with pytest.raises(RuntimeError, match="NO_SUCH_KEY_VAR, which is not set"):
        backend.load()
    backend = OpenAIServerBackend("unused", {"base_url": "http://127.0.0.1:9/v1"}, "cpu")
    with pytest.raises(RuntimeError, match="cannot reach"):
        backend.load()


def test_scraper_gaps_do_not_raise():
    scraper = MetricsScraper("http://127.0.0.1:9/metrics", 0.01).start()
    import time

    time.sleep(0.1)
    assert scraper.stop() == [] and scraper.errors >= 1
