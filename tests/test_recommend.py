"""`llm-energy recommend`: the lowest-energy cell meeting the SLO target, per model and
workload, on hand-built summaries whose answers are worked out by hand."""

import subprocess
import sys

import pandas as pd
import pytest

from llm_energy.analysis import recommend as rec
from llm_energy.analysis.summary import Aggregation, summarise, write_summary
from llm_energy.results.io import RUN_COLUMNS


def _cell(cell_id, model, j_per_token, attainment, tokens_per_s, status="ok", seqs=8,
          j_per_slo_request=None):
    return {"cell_id": cell_id, "model": model, "backend": "vllm", "max_num_seqs": seqs,
            "status": status, "energy_per_output_token_j": j_per_token,
            "energy_per_output_token_j_ci95_low": j_per_token * 0.9,
            "energy_per_output_token_j_ci95_high": j_per_token * 1.1,
            "energy_per_slo_request_j": j_per_slo_request, "slo_attainment": attainment,
            "output_tokens_per_s": tokens_per_s, "slo_target_attainment": 0.9}


SUMMARY = pd.DataFrame([
    _cell("c1", "m1", 0.10, 0.95, 100.0, seqs=1, j_per_slo_request=1.0),
    _cell("c2", "m1", 0.06, 0.80, 200.0, seqs=16, j_per_slo_request=3.0),  # misses 0.9
    _cell("c3", "m1", 0.08, 0.92, 150.0, seqs=4, j_per_slo_request=2.0),
    _cell("c4", "m1", 0.01, 0.99, 300.0, status="failed"),                 # failed: never
    _cell("d1", "m2", 0.20, 0.50, 90.0),
    _cell("d2", "m2", 0.30, 0.40, 80.0),
])


def test_lowest_energy_cell_that_meets_the_target_and_its_cost_against_the_fastest():
    table = rec.recommend(SUMMARY).set_index("model")
    m1 = table.loc["m1"]
    # Meeting 0.9: c1 (0.10 J) and c3 (0.08 J): c3 (c2 is cheaper, 0.06 J, but misses the
    # target). Fastest ok cell: c2 at 200 tokens/s, so c3 costs 33% more energy than it.
    assert m1["verdict"] == "ok" and m1["cell_id"] == "c3" and m1["settings"] == "max_num_seqs=4"
    assert m1["energy_per_output_token_j"] == 0.08
    assert m1["energy_per_output_token_j_ci95_low"] == pytest.approx(0.072)
    assert m1["fastest_cell_id"] == "c2"
    assert m1["energy_saving_vs_fastest_pct"] == pytest.approx((1 - 0.08 / 0.06) * 100)
    assert m1["throughput_cost_vs_fastest_pct"] == pytest.approx((1 - 150 / 200) * 100)
    # m2: no cell reaches 0.9; the best reached is said.
    assert table.loc["m2", "verdict"] == rec.NO_CELL
    assert table.loc["m2", "best_attainment"] == 0.5
    text = rec.format_table(rec.recommend(SUMMARY))
    assert "model=m2: no cell meets the SLO at attainment ≥ 0.9 (best attainment 0.500)" in text


def test_target_and_objective_change_the_answer():
    # A lower target lets c2 (0.06 J) in and m2's d1 win.
    low = rec.recommend(SUMMARY, target=0.45).set_index("model")
    assert low.loc["m1", "cell_id"] == "c2" and low.loc["m2", "cell_id"] == "d1"
    # A higher one leaves only c1.
    assert rec.recommend(SUMMARY, target=0.95).set_index("model").loc["m1", "cell_id"] == "c1"
    # Per SLO-meeting request, c1 (1.0 J) beats c3 (2.0 J).
    per_request = rec.recommend(SUMMARY, "energy_per_slo_request_j").set_index("model")
    assert per_request.loc["m1", "cell_id"] == "c1"


def test_without_slo_the_lowest_energy_ok_cell_wins_and_slo_asks_fail():
    plain = SUMMARY.drop(columns=["slo_attainment", "slo_target_attainment",
                                  "energy_per_slo_request_j"])
    table = rec.recommend(plain).set_index("model")
    assert table.loc["m1", "cell_id"] == "c2" and table.loc["m2", "cell_id"] == "d1"
    with pytest.raises(ValueError, match="no SLO columns"):
        rec.recommend(plain, target=0.9)
    with pytest.raises(ValueError, match="unknown objective"):
        rec.recommend(SUMMARY, "tokens_per_s")


def test_workload_columns_split_the_groups():
    two = pd.concat([SUMMARY.assign(concurrency=1),
                     SUMMARY.assign(concurrency=8, cell_id=SUMMARY["cell_id"] + "x")])
    table = rec.recommend(two)
    assert list(zip(table["model"], table["concurrency"], table["cell_id"].fillna("-"))) == [
        ("m1", 1, "c3"), ("m1", 8, "c3x"), ("m2", 1, "-"), ("m2", 8, "-")]


def test_cli_on_a_summary_written_by_the_aggregation(tmp_path):
    """A real run: summary from runs and requests through `summarise` and `write_summary`,
    then `llm-energy recommend` in a subprocess, printing and writing the CSV."""
    runs, requests = [], []
    # Cell A: 10 J per cycle, all 4 requests meet TTFT ≤ 200 ms. Cell B: 6 J, only 2 meet.
    for cell, energy, slow in (("aaaaaaaaaaa1", 10.0, 0), ("bbbbbbbbbbb2", 6.0, 2)):
        for k in range(2):
            row = dict.fromkeys(RUN_COLUMNS)
            row.update(schema_version=1, cell_id=cell, cycle=k, model="tiny",
                       backend="transformers", device="cpu", status="ok", warnings=[],
                       energy_source="estimate", total_energy_j=energy, output_tokens=40,
                       requests=4, duration_s=1.0, batch_size=1 if slow == 0 else 4)
            runs.append(row)
            requests += [{"cell_id": cell, "cycle": k, "success": True, "output_tokens": 10,
                          "first_token_s": 0.1, "finish_s": 0.5, "tpot_ms": 5.0,
                          "ttft_ms": 500.0 if r < slow else 100.0, "e2e_ms": 600.0,
                          "itl_ms": [5.0]} for r in range(4)]
    summary = summarise(pd.DataFrame(runs), pd.DataFrame(requests), 50,
                        {"ttft_ms": 200.0, "target_attainment": 0.9})
    parquet = tmp_path / "summary.parquet"
    write_summary(Aggregation(summary, pd.DataFrame(runs)), parquet, tmp_path / "summary.csv")
    out = tmp_path / "rec.csv"
    run = subprocess.run([sys.executable, "-m", "llm_energy.cli", "recommend", str(parquet),
                          "-o", str(out)], check=False, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    # B uses less energy (6 J ÷ 40 tokens) but meets the SLO for half its requests: A wins.
    assert "model=tiny: aaaaaaaaaaa1 transformers (batch_size=1)" in run.stdout
    written = pd.read_csv(out)
    assert written.loc[0, "cell_id"] == "aaaaaaaaaaa1"
    assert written.loc[0, "energy_per_output_token_j"] == pytest.approx(10.0 / 40)
    assert written.loc[0, "slo_attainment"] == pytest.approx(1.0)
    # Asked for 0.5, B qualifies and wins on energy.
    run = subprocess.run([sys.executable, "-m", "llm_energy.cli", "recommend", str(parquet),
                          "--target", "0.5"], check=False, capture_output=True, text=True)
    assert "model=tiny: bbbbbbbbbbb2" in run.stdout, run.stdout + run.stderr


def test_power_caps_and_clocks_are_configurations_like_any_other_axis():
    """A power-cap × clock sweep: the winner is the capped cell that still meets the SLO, and
    its settings name the cap and the clock (hand-computed below)."""
    def capped(cell_id, cap_w, clock_mhz, j_per_token, attainment, tokens_per_s):
        row = _cell(cell_id, "m", j_per_token, attainment, tokens_per_s, seqs=8)
        return {**row, "gpu_power_limit_w": cap_w, "gpu_sm_clock_mhz": clock_mhz}

    summary = pd.DataFrame([
        capped("p700", 700.0, 1980.0, 0.50, 0.99, 1000.0),   # fastest, most energy
        capped("p500", 500.0, 1980.0, 0.40, 0.95, 900.0),
        capped("p300", 300.0, 1410.0, 0.30, 0.91, 600.0),    # cheapest that meets 0.9
        capped("p200", 200.0, 1410.0, 0.25, 0.70, 400.0),    # cheaper still, misses 0.9
    ])
    row = rec.recommend(summary).iloc[0]
    assert row["cell_id"] == "p300"
    assert row["settings"] == "gpu_power_limit_w=300.0, gpu_sm_clock_mhz=1410.0"
    assert row["fastest_cell_id"] == "p700"
    assert row["energy_saving_vs_fastest_pct"] == pytest.approx(40.0)     # 1 − 0.30/0.50
    assert row["throughput_cost_vs_fastest_pct"] == pytest.approx(40.0)   # 1 − 600/1000


def test_the_report_section_gives_the_same_answer_as_the_command():
    section = rec.report_section(SUMMARY)
    assert 'id="recommendation"' in section and "meeting the SLO target" in section
    items = section.split("<li>")[1:]
    assert len(items) == 2                                   # m1 and m2
    assert items[0].startswith("model=m1: c3 vllm (max_num_seqs=4)")
    assert "vs fastest c2: 33.3% more energy, 25.0% lower" in items[0]
    assert items[1].startswith("model=m2: no cell meets the SLO")
    assert rec.report_section(SUMMARY.drop(columns="energy_per_output_token_j")) == ""


def test_cli_names_what_is_wrong_with_the_summary(tmp_path):
    cli = [sys.executable, "-m", "llm_energy.cli", "recommend"]
    missing = subprocess.run([*cli, str(tmp_path / "nope.parquet")], capture_output=True,
                             text=True, cwd=tmp_path)
    assert missing.returncode == 1 and "no summary at" in missing.stderr
    none = subprocess.run(cli, capture_output=True, text=True, cwd=tmp_path)
    assert none.returncode == 1 and "0 found under results/" in none.stderr
    pd.DataFrame({"model": ["m"], "energy_per_output_token_j": [0.1]}).to_csv(tmp_path / "s.csv")
    foreign = subprocess.run([*cli, str(tmp_path / "s.csv")], capture_output=True, text=True)
    assert foreign.returncode == 1 and "Traceback" not in foreign.stderr
    assert "not an llm-energy summary: no column(s) cell_id, backend, status" in foreign.stderr
