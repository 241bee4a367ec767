"""Load generator and openai-server backend against a real HTTP server on 127.0.0.1
(tests/fakes/openai_server.py): arrivals, streaming, token counting, failures, /metrics."""

from __future__ import annotations

import statistics

import pytest
from fakes.openai_server import FakeServer

from llm_energy.backends.openai_server import OpenAIServerBackend
from llm_energy.loadgen.client import Endpoint, LoadSpec, poisson_offsets_s, run_load
from llm_energy.loadgen.prometheus import MetricsScraper, parse_prometheus, server_cycle_columns

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
        assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
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
    # Never early; late only by scheduling delay (loose bound: CI machines are busy), and the
    # offsets are absolute, so one late request does not push the later ones back.
    for want, got in zip(expected, sent):
        assert want - 0.005 <= got <= want + 0.5
    assert sent == sorted(sent)
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
    from its usage chunk, one time per token (the chunk's last, the others spread over the gap
    before it, in the first chunk its own time), marked not observed."""
    with FakeServer(ids=False, tokens_per_chunk=2) as server:
        result = run_load(Endpoint(server.base_url, "fake-model", extensions=False),
                          PROMPTS[:2], 6, LoadSpec())
        body = server.requests[0]["body"]
        assert "min_tokens" not in body and "continuous_usage_stats" not in body["stream_options"]
    for record in result.records:
        assert record.success and record.output_tokens == 6
        assert len(record.token_times_s) == 6 and record.output_token_ids is None
        assert record.token_time_observed == [False, True] * 3
        times = record.token_times_s
        assert times[0] == times[1] < times[2] < times[3] < times[4] < times[5]
        assert times[3] - times[2] == pytest.approx(times[2] - times[1])
        assert "3 streamed chunk(s) (3 with text) but the server reports 6 tokens" in record.count_note


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
    # Scrapes at the window's edges may see 0 running (a loaded machine delays the first
    # request's arrival at the server): the mean is positive and at most the concurrency.
    assert 0.0 < columns["server_avg_batch_size"] <= 3.0


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
    import time

    scraper = MetricsScraper("http://127.0.0.1:9/metrics", 0.01).start()
    # Wait for the first failed scrape (the thread imports httpx first: slow on a busy host).
    deadline = time.monotonic() + 20.0
    while scraper.errors < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert scraper.stop() == [] and scraper.errors >= 1


# ---------------------------------------------------------------- server flags, config, matrix


def test_server_command_passes_every_engine_setting_as_a_flag(demo_model_dir):
    from llm_energy.backends.vllm_backend import engine_kwargs
    from llm_energy.backends.vllm_server import server_command

    settings = {"max_num_seqs": 4, "dtype": "bfloat16", "quantization": None,
                "tensor_parallel_size": 1, "max_num_batched_tokens": 256,
                "enable_prefix_caching": False, "enforce_eager": True, "max_model_len": 128,
                "gpu_memory_utilization": 0.9, "mode": "server", "trust_remote_code": False}
    kwargs = engine_kwargs(demo_model_dir, settings, "cpu")
    args = server_command("/py", kwargs, 4321)
    assert args[:3] == ["/py", "-m", "vllm.entrypoints.openai.api_server"]
    flags = " ".join(args)
    assert "--host 127.0.0.1 --port 4321" in flags
    assert f"--model {demo_model_dir}" in flags and "--max-num-seqs 4" in flags
    assert "--max-num-batched-tokens 256" in flags and "--max-model-len 128" in flags
    # Booleans explicit both ways, so vLLM's defaults (prefix caching on in V1) never decide.
    assert "--no-enable-prefix-caching" in args and "--enforce-eager" in args
    assert "--no-trust-remote-code" in args
    assert f"--kv-cache-memory-bytes {kwargs['kv_cache_memory_bytes']}" in flags
    # Stats stay on: they feed /metrics. No quantization flag when none is set.
    assert "--disable-log-stats" not in args and "--quantization" not in args
    assert all(isinstance(a, str) for a in args)  # an argument list, never a shell string


def test_vllm_mode_selects_the_server_backend():
    from llm_energy.backends import backend_class, is_server
    from llm_energy.backends.vllm_backend import VllmBackend
    from llm_energy.backends.vllm_server import VllmServerBackend

    assert backend_class("vllm", {"mode": "server"}) is VllmServerBackend
    assert backend_class("vllm", {"mode": "offline"}) is VllmBackend
    assert is_server("vllm", {"mode": "server"}) and is_server("openai-server", {})
    assert not is_server("vllm", {"mode": "offline"}) and not is_server("transformers", {})


def test_poisson_keeps_offline_cells_all_at_once_and_batch_limit_uses_concurrency():
    from conftest import small_study

    from llm_energy.measure.protocol import batch_limit
    from llm_energy.study.config import ConfigError, validate_study
    from llm_energy.study.matrix import expand

    study = validate_study(small_study(
        backends={"transformers": {"batch_size": [2]}, "vllm": {"mode": ["offline", "server"]}},
        workload={"num_prompts": 4, "input_tokens": 8, "output_tokens": 2, "arrival": "poisson",
                  "request_rate_per_s": 2.0}))
    cells, pruned = expand(study)
    # Server-only arrival settings never prune: offline cells get every request at once.
    assert not pruned
    arrivals = {(c.backend, c.settings.get("mode")): c.config["workload"] for c in cells}
    assert arrivals[("vllm", "server")]["arrival"] == "poisson"
    assert arrivals[("vllm", "server")]["request_rate_per_s"] == 2.0
    for offline in (("transformers", None), ("vllm", "offline")):
        assert arrivals[offline]["arrival"] == "closed"
        assert arrivals[offline]["request_rate_per_s"] is None
        assert arrivals[offline]["concurrency"] is None
    with pytest.raises(ConfigError, match="request_rate_per_s is required"):
        validate_study(small_study(workload={"arrival": "poisson"}))
    workload = {"num_prompts": 16, "arrival": "closed", "concurrency": 3}
    assert batch_limit("vllm", {"max_num_seqs": 8, "mode": "server"}, workload) == 3
    assert batch_limit("vllm", {"max_num_seqs": 8, "mode": "offline"}, workload) == 8
    assert batch_limit("openai-server", {}, {"num_prompts": 16}) == 16


def test_config_readme_documents_the_new_keys():
    from conftest import ROOT

    from llm_energy.backends.openai_server_spec import OpenAIServerConfig
    from llm_energy.backends.tensorrt_llm_spec import TensorrtLlmConfig
    from llm_energy.study import config as c

    readme = (ROOT / "config" / "README.md").read_text()
    for model in (TensorrtLlmConfig, OpenAIServerConfig, c.WorkloadConfig):
        for name in model.model_fields:
            assert f"`{name}`" in readme, f"{model.__name__}.{name}"
    assert "`backends.tensorrt-llm`" in readme and "`backends.openai-server`" in readme


@pytest.mark.e2e
def test_openai_server_cell_through_snakemake(tmp_path):
    """The openai-server backend's real path: snakemake plans the cell, the measuring process
    (the pipeline's own environment) drives a server on this host with Poisson arrivals."""
    import pyarrow.parquet as pq
    from conftest import run_snakemake, small_study, study_dir, write_config

    with FakeServer(token_delay_s=0.005) as server:
        study = small_study(
            backends={"openai-server": {"base_url": server.base_url}},
            workload={"num_prompts": 6, "input_tokens": 16, "output_tokens": 8,
                      "arrival": "poisson", "request_rate_per_s": 20.0, "seed": 3},
            measurement={"cycles": 2, "idle_duration_s": 0.2, "idle_cache_ttl_s": 0,
                         "warmup": {"min_runs": 1, "max_runs": 1}})
        run_snakemake(tmp_path, write_config(tmp_path, study), timeout=600)
    (cell,) = (study_dir(tmp_path) / "cells" / "tiny" / "openai-server").iterdir()
    runs = pq.read_table(cell / "runs.parquet").to_pylist()
    requests = pq.read_table(cell / "requests.parquet").to_pylist()
    assert [r["status"] for r in runs] == ["ok", "ok"], runs[0]["error"]
    # Each cycle is one stream of R x 6 requests under the same Poisson process, R chosen so
    # that the energy window reaches min_window_s.
    assert all(r["output_tokens"] == 48 * r["repetitions"] and r["total_energy_j"] > 0
               for r in runs)
    assert all(q["success"] and q["output_tokens"] == 8 and len(q["itl_ms"]) == 7
               for q in requests)
    # Poisson arrivals: the schedule (seeded) shows in the recorded arrival times.
    # (the first six of a cycle's stream: R repetitions continue the same seeded schedule)
    expected = poisson_offsets_s(6, 20.0, 3)
    first = sorted((q for q in requests if q["cycle"] == 0), key=lambda q: q["request_id"])
    for want, q in zip(expected, first):
        assert q["arrival_s"] == pytest.approx(want, abs=0.1)
    # Warmup (one request: Poisson arrivals have no batch limit to fill) + the cycles' R x 6
    # requests reached the server, all as token ids.
    assert len(server.requests) == 1 + 6 * sum(r["repetitions"] for r in runs)
    assert all(len(r["body"]["prompt"]) == 16 for r in server.requests)
    series = pq.read_table(cell / "timeseries.parquet").to_pandas()
    assert (series["device"] == "server").any()


def test_a_cycle_the_server_was_too_busy_to_report_is_flagged():
    from llm_energy.loadgen.prometheus import ServerSample, scrape_coverage_warning

    def scrapes(times):
        return [ServerSample(t, "server", 2.0, 0.0, 10.0) for t in times]

    period = 0.05  # 20 Hz: a 1 s cycle asks ~20 times
    steady = scrapes([10.0 + k * period for k in range(21)])
    assert scrape_coverage_warning(steady, 0, 10.0, 11.0, period) is None
    late = scrapes([10.0, 10.6, 11.0, 11.2])
    assert scrape_coverage_warning(late, 3, 10.0, 11.0, period) == (
        "server /metrics answered 3 time(s) in cycle 3 against ~20 asked (20 Hz): the server "
        "was too busy to report, so the cycle's server_* gauge columns are null (its few "
        "answers describe only the moments it was free)")
    # Its gauge columns are null, not the idle moments' values (2.0 running at each answer);
    # the scrape count stays; with enough answers the same gauges are averaged.
    starved = server_cycle_columns(late, 10.0, 11.0, period)
    assert starved == {"server_metric_samples": 3, "server_avg_batch_size": None,
                       "server_max_batch_size": None, "server_kv_cache_usage_pct_mean": None,
                       "server_kv_cache_usage_pct_max": None}
    covered = server_cycle_columns(steady, 10.0, 11.0, period)
    assert covered["server_metric_samples"] == 21
    assert covered["server_avg_batch_size"] == 2.0 and covered["server_max_batch_size"] == 2.0
    # A cycle shorter than two scrape periods cannot be judged.
    assert scrape_coverage_warning([], 0, 10.0, 10.06, period) is None
