"""Real vLLM cells on CPU: one offline and one server cell through snakemake (two engine starts,
about a minute each on 2 cores), and a server cell whose server is killed mid-cell (one more)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import psutil
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, VLLM_PYTHON, run_snakemake, small_study, study_dir, write_config

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.vllm,
    pytest.mark.skipif(not VLLM_PYTHON.exists(),
                       reason=f"no vLLM environment at {VLLM_PYTHON} (run `make venv-vllm`)"),
]

# Cycles of ~1 s: long enough for several /metrics scrapes (20 Hz) inside each server cycle.
NUM_PROMPTS, OUTPUT_TOKENS, CYCLES = 8, 64, 2
VLLM_AXES = {"max_num_seqs": [2], "dtype": ["bfloat16"], "enforce_eager": [True],
             "max_model_len": 128, "gpu_memory_utilization": 0.5}
MEASUREMENT = {"cycles": CYCLES, "idle_duration_s": 0.3, "sampler_hz": 20,
               "idle_cache_ttl_s": 0, "warmup": {"min_runs": 1, "max_runs": 1}}


def _server_processes(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "vllm.entrypoints.openai.api_server" in cmdline and marker in " ".join(cmdline):
            found.append(proc)
    return found


def test_vllm_offline_and_server_cells_through_snakemake(tmp_path):
    study = small_study(
        backends={"vllm": {**VLLM_AXES, "mode": ["offline", "server"]}},
        workload={"num_prompts": NUM_PROMPTS, "input_tokens": 16, "output_tokens": OUTPUT_TOKENS},
        measurement=MEASUREMENT)
    run_snakemake(tmp_path, write_config(tmp_path, study), timeout=900)

    cells = sorted((study_dir(tmp_path) / "cells" / "tiny" / "vllm").iterdir())
    assert len(cells) == 2
    modes = {}
    for cell in cells:
        runs = pq.read_table(cell / "runs.parquet").to_pylist()
        requests = pq.read_table(cell / "requests.parquet").to_pylist()
        mode = runs[0]["mode"]
        modes[mode] = (runs, requests, cell)
        assert [r["status"] for r in runs] == ["ok"] * CYCLES, runs[0]["error"]
        for run in runs:
            # Each cycle repeats the workload (one stream for the server) until its energy
            # window reaches min_window_s.
            n = NUM_PROMPTS * run["repetitions"]
            assert run["output_tokens"] == n * OUTPUT_TOKENS
            assert run["requests"] == n and run["input_tokens"] == n * 16
            assert run["total_energy_j"] > 0 and run["energy_source"] == "estimate"
            assert run["energy_per_output_token_j"] == pytest.approx(
                run["total_energy_j"] / run["output_tokens"])
            assert run["ttft_ms_p50"] > 0 and run["itl_ms_p50"] is not None
            mine = [q for q in requests if q["cycle"] == run["cycle"]]
            assert len(mine) == n
            # Per-request energy splits the cycle's energy exactly.
            assert sum(q["energy_j"] for q in mine) == pytest.approx(run["total_energy_j"], rel=1e-6)
            for q in mine:
                assert q["success"] and q["error"] is None and q["output_tokens"] == OUTPUT_TOKENS
                assert len(q["itl_ms"]) == OUTPUT_TOKENS - 1
                assert 0 <= q["arrival_s"] <= q["first_token_s"] <= q["finish_s"]
                assert q["ttft_ms"] > 0 and q["e2e_ms"] >= q["ttft_ms"]
    assert set(modes) == {"offline", "server"}

    # Server cell: /metrics scraped into the time series and summarised per cycle.
    runs, _, cell = modes["server"]
    series = pq.read_table(cell / "timeseries.parquet").to_pandas()
    server = series[series["device"] == "server"]
    # Every answered scrape carries vLLM's gauges (a failed scrape is a gap, never a row of 0s).
    assert len(server) >= 3 and server["requests_running"].notna().all()
    assert server["kv_cache_usage_pct"].between(0, 100).all()
    for r in runs:
        inside = server[server["phase"] == f"cycle{r['cycle']}"]
        # The cycle's server_* columns are its scrapes in the time series.
        assert len(inside) == r["server_metric_samples"], r
        too_busy = any("server /metrics answered" in w for w in r["warnings"])
        if too_busy:  # its few answers describe idle moments: the gauge columns are null
            assert r["server_max_batch_size"] is None and r["server_avg_batch_size"] is None, r
        elif len(inside):
            assert inside["requests_running"].max() == r["server_max_batch_size"], r
        # On 2 cores the API server shares the CPU with its engine. Starved, it answers
        # /metrics only once it has drained its backlog of engine outputs, i.e. when the engine
        # has run out of requests (gauge 0: a loaded run had 13 answers in 2 cycles, all 0,
        # while the client got each request's 64 tokens within 1 ms). Then it answers far less
        # often than asked and the cycle must say so; otherwise its scrapes inside the cycle
        # must see the engine running.
        assert too_busy or (r["server_metric_samples"] >= 1 and r["server_max_batch_size"] >= 1), r
    assert not (series[series["device"] == "cpu"].empty)
    # The server (its --model is the demo model built under tmp_path) is gone.
    assert _server_processes(str(tmp_path)) == []
    offline_cell = modes["offline"][2]
    assert offline_cell.parent == cell.parent and offline_cell.name != cell.name


def test_server_killed_mid_cell_fails_cleanly(tmp_path, demo_model_dir):
    """SIGKILL the API server while the cycles run: the cell fails naming the dead server, and
    neither the server nor its engine-core process is left running."""
    from llm_energy.execution import runner
    from llm_energy.study.config import validate_study
    from llm_energy.study.matrix import expand

    study = validate_study(small_study(
        backends={"vllm": {**VLLM_AXES, "mode": ["server"]}},
        workload={"num_prompts": 8, "input_tokens": 16, "output_tokens": 96},
        measurement={**MEASUREMENT, "cycles": 5}))
    cell = expand(study)[0][0]
    config = json.loads(json.dumps({**cell.config, "cell_id": cell.cell_id}))
    log_path = tmp_path / "cell.log"
    marker = str(demo_model_dir)
    killed: dict[str, object] = {}

    def killer() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            text = log_path.read_text() if log_path.exists() else ""
            servers = _server_processes(marker)
            if "warmup run(s)" in text and servers:
                server = servers[0]
                killed["family"] = [server, *server.children(recursive=True)]
                killed["pid"] = server.pid
                os.kill(server.pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    with open(log_path, "w") as log:
        status = runner.run_cell(config, marker, tmp_path / "out", log=log, project_dir=ROOT)
    thread.join(timeout=5)
    assert "pid" in killed, "the server was never seen running: " + log_path.read_text()[-3000:]
    assert status == "failed"
    row = pq.read_table(tmp_path / "out" / "runs.parquet").to_pylist()[0]
    assert row["status"] == "failed"
    assert f"vLLM server (pid {killed['pid']}) exited with status -9" in row["error"], row["error"]
    family = killed["family"]
    assert len(family) >= 2, "expected the API server and its engine-core process"
    gone, alive = psutil.wait_procs(family, timeout=10)
    assert alive == [], [p.pid for p in alive]
    assert _server_processes(marker) == []
