"""Token arrivals from streaming servers and failed requests, against the fake OpenAI-compatible
server on 127.0.0.1 (tests/fakes/openai_server.py) and through the cycle's rows: several tokens
per chunk, a token whose text is empty, a burst, and requests that return fewer tokens than
asked."""

from __future__ import annotations

import time

import pyarrow.parquet as pq
import pytest
from conftest import small_study
from fakes.openai_server import FakeServer

from llm_energy.backends.base import RequestRecord
from llm_energy.loadgen.client import Endpoint, LoadSpec, run_load
from llm_energy.loadgen.stream import (
    Chunk,
    StreamedResponse,
    share_tokens,
    token_arrivals,
)
from llm_energy.measure import metrics
from llm_energy.measure.protocol import CellRunner
from llm_energy.measure.request_checks import BURST_GAP_MS, raise_if_all_failed
from llm_energy.results.io import write_cell
from llm_energy.study.config import validate_study
from llm_energy.study.matrix import expand
from llm_energy.telemetry.meters.base import Meter, WindowEnergy
from llm_energy.telemetry.sampler import Sample


class ConstantMeter(Meter):
    @property
    def sources(self):
        return {"cpu": "rapl"}

    def read_j(self):
        return {"cpu": time.perf_counter()}


def runner(tmp_path, output_tokens: int, num_prompts: int = 1, extensions: bool = True,
           **measurement):
    study = small_study(
        backends={"openai-server": {"base_url": "http://127.0.0.1:9/v1",
                                    "server_extensions": extensions}},
        workload={"num_prompts": num_prompts, "input_tokens": 4,
                  "output_tokens": output_tokens, "concurrency": 1})
    study["measurement"].update(idle_cache_dir=str(tmp_path / "idle"), **measurement)
    cells, _ = expand(validate_study(study))
    return CellRunner({**cells[0].config, "cell_id": cells[0].cell_id}, "unused",
                      meter=ConstantMeter())


def rows(tmp_path, result, max_tokens, extensions=True, samples=(), **measurement):
    """The protocol's rows of one cycle's load result (5 J in the window)."""
    cell = runner(tmp_path, max_tokens, len(result.records), extensions, **measurement)
    window = WindowEnergy(result.end_s - result.start_s, {"cpu": 5.0, "gpu": None, "dram": None},
                          {"cpu": "rapl"})
    return cell._cycle_rows(0, result.records, result.start_s, result.end_s, window, None,
                            list(samples), None)


def power(t_s: float, watts: float) -> Sample:
    return Sample(t_s, "cpu", watts, "rapl", None, None, None, None)


def cycle(tmp_path, server, prompts, max_tokens, extensions=True, concurrency=1):
    """One cycle through the load generator and the protocol's row builder."""
    result = run_load(Endpoint(server.base_url, "fake-model", extensions=extensions), prompts,
                      max_tokens, LoadSpec(concurrency=concurrency))
    row, requests = rows(tmp_path, result, max_tokens, extensions)
    return result.records, row, requests


# (server sends token ids, client asks for vLLM's extensions): text + final usage only;
# per-chunk usage (continuous_usage_stats) without ids; token ids.
MODES = {"text-and-final-usage": (False, False), "usage-per-chunk": (False, True),
         "token-ids": (True, True)}


@pytest.mark.parametrize("mode", MODES)
def test_four_tokens_per_chunk_count_as_64_real_tokens(tmp_path, mode):
    ids, extensions = MODES[mode]
    with FakeServer(token_delay_s=0.01, tokens_per_chunk=4, ids=ids) as server:
        result = run_load(Endpoint(server.base_url, "fake-model", extensions=extensions),
                          [[10, 11, 12, 13]], 64, LoadSpec(concurrency=1))
    (record,) = result.records
    row, (request,) = rows(tmp_path, result, 64, extensions)
    assert record.success, record.error
    assert record.output_tokens == 64 and len(record.token_times_s) == 64
    assert len(request["itl_ms"]) == 63
    # (E2E - TTFT) / 63 with chunks every 40 ms: 600 ms / 63 = 9.5 ms, not 40 ms.
    assert 8.0 <= row["tpot_ms_p50"] <= 12.0
    assert 8.0 <= row["itl_ms_p50"] <= 12.0
    assert row["output_tokens"] == 64
    # Both window rules open the window at the first token (the first chunk, 4 tokens) and
    # close it at the last: the 60 real tokens after the first chunk fall inside (counted per
    # chunk it was 15). The window's energy is the cycle's power over the window, not a share
    # of the cycle's J/token: the wait for the first chunk (connection, first 4 tokens) is
    # outside it, and on a loaded machine it takes from 5% to half of the cycle.
    start, end = result.start_s, result.end_s
    first, last = record.first_token_s, record.finish_s
    assert first == record.token_times_s[3] and last == record.token_times_s[-1]
    # Power: 40 W until shortly before the first chunk, then 10 W (a ramp of 5 ms between two
    # samples on the sampler's 1 ms grid), held past the end.
    t1, t2 = round(first, 3) - 0.010, round(first, 3) - 0.005
    profile = [power(round(start, 3) - 0.010, 40.0), power(t1, 40.0), power(t2, 10.0),
               power(round(end, 3) + 0.5, 10.0)]
    whole_j = 40.0 * (t1 - start) + 25.0 * (t2 - t1) + 10.0 * (end - t2)
    for rule in ("mlenergy", "batch-full"):
        for samples, steady_j in (([], 5.0 * (last - first) / (end - start)),
                                  (profile, 5.0 * 10.0 * (last - first) / whole_j)):
            steady, _ = rows(tmp_path, result, 64, extensions, samples, steady_state_rule=rule)
            assert steady["steady_state_output_tokens"] == 60, rule
            assert steady["steady_state_start_s"] == pytest.approx(first - start, abs=1e-9)
            assert steady["steady_state_end_s"] == pytest.approx(last - start, abs=1e-9)
            assert steady["steady_state_energy_j"] == pytest.approx(steady_j, rel=1e-6), rule
            assert ("fewer than 2 power samples in the cycle: steady-state energy apportioned "
                    "by time" in steady["warnings"]) == (not samples)
    assert any("arrived several to a streamed chunk" in w and w.startswith("48 of 64 output tokens")
               for w in row["warnings"]), row["warnings"]
    # Only the text-only server's count disagrees with the stream (16 chunks, 64 tokens).
    assert any("whose streamed token count is not confirmed by the server" in w and
               "16 streamed chunk(s) (16 with text) but the server reports 64 tokens" in w
               for w in row["warnings"]) == (
        mode == "text-and-final-usage")


@pytest.mark.parametrize("mode", MODES)
def test_a_token_with_empty_text_is_counted_and_ttft_is_not_late(tmp_path, mode):
    ids, extensions = MODES[mode]
    delay = 0.1
    with FakeServer(token_delay_s=delay, empty_text_at=(0,), ids=ids) as server:
        (record,), row, _ = cycle(tmp_path, server, [[20, 11, 12, 13]], 6, extensions)
        received_s, sent = server.requests[0]["start_s"], server.requests[0]["chunk_s"]
    assert record.success, record.error
    assert record.output_tokens == 6 and len(record.token_times_s) == 6
    assert record.count_note is None and record.token_time_observed is None
    # The first token is the empty-text chunk, read before the second chunk was even sent.
    assert sent[0] <= record.token_times_s[0] < sent[1]
    # So TTFT ends at the empty chunk, a whole token time (the server's gap between chunks)
    # before a client that skipped it would stop the clock: the order of events, not a wall-clock
    # bound, which a loaded machine can stretch.
    assert sent[1] - sent[0] >= delay * 0.9 and received_s <= sent[0]
    assert metrics.ttft_ms(record) == pytest.approx(
        (record.token_times_s[0] - record.arrival_s) * 1000)
    assert metrics.ttft_ms(record) < (sent[1] - record.arrival_s) * 1000
    assert not any("token" in w and "chunk" in w for w in row["warnings"]), row["warnings"]


def test_an_empty_final_chunk_without_a_token_is_not_counted():
    """OpenAI-style servers end with an empty chunk that only carries finish_reason."""
    stream = StreamedResponse([Chunk(1.0, 2), Chunk(1.1, 1), Chunk(1.2, 0)], usage_tokens=2)
    arrivals = token_arrivals(stream)
    assert arrivals.times_s == [1.0, 1.1] and arrivals.note is None
    # A token with empty text in the middle, which usage confirms, is counted.
    stream = StreamedResponse([Chunk(1.0, 2), Chunk(1.1, 0), Chunk(1.2, 1)], usage_tokens=3)
    assert token_arrivals(stream).times_s == [1.0, 1.1, 1.2]
    # Neither agrees: usage is shared over the chunks by text length, and noted.
    stream = StreamedResponse([Chunk(1.0, 4), Chunk(1.4, 8), Chunk(1.6, 0)], usage_tokens=6)
    arrivals = token_arrivals(stream)
    assert arrivals.times_s == pytest.approx([1.0, 1.0, 1.1, 1.2, 1.3, 1.4])
    assert arrivals.observed == [False, True, False, False, False, True]
    assert "3 streamed chunk(s) (2 with text) but the server reports 6 tokens" in arrivals.note
    assert share_tokens(6, [4, 8, 0]) == [2, 4, 0] and share_tokens(1, [3, 1]) == [1, 0]


def test_per_chunk_usage_counts_and_is_checked_against_the_final_usage():
    chunks = [Chunk(1.0, 1, usage_tokens=1), Chunk(1.3, 3, usage_tokens=4)]
    arrivals = token_arrivals(StreamedResponse(chunks, usage_tokens=4))
    assert arrivals.count_source == "usage-per-chunk" and arrivals.note is None
    assert arrivals.times_s == pytest.approx([1.0, 1.1, 1.2, 1.3])
    chunks.append(Chunk(1.4, 0))  # finish_reason only: no usage, no text, no token
    assert token_arrivals(StreamedResponse(chunks, usage_tokens=4)).times_s == arrivals.times_s
    chunks.append(Chunk(1.5, 2))  # text without usage: per-chunk usage is incomplete
    assert token_arrivals(StreamedResponse(chunks, usage_tokens=5)).count_source != "usage-per-chunk"
    chunks[-1].usage_tokens = 4
    arrivals = token_arrivals(StreamedResponse(chunks, usage_tokens=5))
    assert arrivals.note == ("per-chunk usage adds up to 4 tokens but the server's final usage "
                             "says 5: the per-chunk count is used")


def test_token_ids_that_contradict_usage_fail_the_request():
    stream = StreamedResponse([Chunk(1.0, 1, exact=1, ids=[5]), Chunk(1.1, 1, exact=1, ids=[6])],
                              usage_tokens=3)
    assert token_arrivals(stream).error == "streamed 2 tokens (token_ids) but the server reports 3"


def test_a_burst_is_flagged_not_reported_as_a_fast_decode(tmp_path):
    with FakeServer(token_delay_s=0.005, burst=True) as server:
        (record,), row, _ = cycle(tmp_path, server, [[30, 11, 12, 13]], 32)
    assert record.success and record.output_tokens == 32
    # All 32 tokens were made over 160 ms but delivered at the end: TTFT ~ E2E.
    assert metrics.ttft_ms(record) > 0.8 * metrics.e2e_ms(record)
    flags = [w for w in row["warnings"] if f"under {BURST_GAP_MS:g} ms" in w]
    assert flags, row["warnings"]
    assert "inter-token gaps in cycle 0" in flags[0]


def test_burst_rule_on_exact_times(tmp_path):
    cell = runner(tmp_path, 5, 2)
    steady = RequestRecord(0, 4, 5, 0.0, token_times_s=[0.1, 0.11, 0.12, 0.13, 0.14])
    burst = RequestRecord(1, 4, 5, 0.0, token_times_s=[0.5, 0.50001, 0.50002, 0.50003, 0.50004])
    window = WindowEnergy(1.0, {"cpu": 5.0, "gpu": None, "dram": None}, {"cpu": "rapl"})
    row, _ = cell._cycle_rows(0, [steady, burst], 0.0, 1.0, window, None, [], None)
    assert row["tpot_ms_p50"] == pytest.approx(5.005)
    assert ("4 of 8 inter-token gaps in cycle 0 are under 0.2 ms, shorter than any decode step "
            "(1 request(s) delivered mostly in bursts") in "\n".join(row["warnings"])
    row, _ = cell._cycle_rows(0, [steady], 0.0, 1.0, window, None, [], None)
    assert not any("inter-token gaps" in w for w in row["warnings"])


# ---------------------------------------------------------------- failed requests


def test_requests_cut_short_are_failed_rows_with_their_reason(tmp_path):
    prompts = [[40, 1, 2, 3], [41, 1, 2, 3], [42, 1, 2, 3]]
    with FakeServer(token_delay_s=0.002, stop_at={41: 16}) as server:
        records, row, requests = cycle(tmp_path, server, prompts, 32, concurrency=3)
    assert [r.success for r in records] == [True, False, True]
    reason = "server returned 16 tokens, expected 32 (finish_reason 'length')"
    assert records[1].error == reason
    assert row["success_rate"] == pytest.approx(2 / 3)
    assert row["output_tokens"] == 64 and row["requests"] == 2
    assert (f"1 of 3 requests failed in cycle 0 ({reason}): this cycle's metrics cover its 2 "
            "successful request(s) only") in row["warnings"]
    # Kept in requests.parquet: error a string column, null on success.
    write_cell(tmp_path / "cell", [row], requests, [], {})
    table = pq.read_table(tmp_path / "cell" / "requests.parquet")
    assert str(table.schema.field("error").type) == "string"
    assert table.column("error").to_pylist() == [None, reason, None]
    runs = pq.read_table(tmp_path / "cell" / "runs.parquet")
    assert runs.column("success_rate").to_pylist() == [pytest.approx(2 / 3)]
    # ... and in the summary, where the cell stays `ok` (some requests succeeded).
    from llm_energy.analysis.summary import aggregate

    summary = aggregate([tmp_path / "cell" / "runs.parquet"]).summary
    assert list(summary["status"]) == ["ok"]
    assert list(summary["success_rate"]) == [pytest.approx(2 / 3)]


def test_a_cycle_whose_requests_all_failed_fails_the_cell(tmp_path):
    with FakeServer(token_delay_s=0.002, stop_at=16) as server:
        result = run_load(Endpoint(server.base_url, "fake-model"), [[50, 1], [51, 1]], 32,
                          LoadSpec())
    with pytest.raises(RuntimeError, match=r"^every request of cycle 0 failed \(2\): server "
                       r"returned 16 tokens, expected 32 \(finish_reason 'length'\)$"):
        raise_if_all_failed(result.records, "cycle 0")
    raise_if_all_failed(result.records[:0], "cycle 0")  # no requests: nothing to say


def test_offline_records_short_of_the_asked_length_fail():
    from llm_energy.backends.base import fail_short_records

    records = [RequestRecord(0, 8, 32, 0.0), RequestRecord(1, 8, 16, 0.0),
               RequestRecord(2, 8, 0, 0.0, success=False, error="engine error")]
    fail_short_records(records, 32, "vllm", " (prompt 8 tokens, max_model_len 24)")
    assert [r.success for r in records] == [True, False, False]
    assert records[1].error == "vllm returned 16 tokens, expected 32 (prompt 8 tokens, max_model_len 24)"
    assert records[2].error == "engine error"  # the first reason is kept
