"""Smoke runs of the benchmarks in bench/ (quick modes, seconds each)."""

import json
import subprocess
import sys

from conftest import ROOT


def test_sampler_overhead_quick_meets_the_10hz_target(tmp_path):
    out = tmp_path / "sampler.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "sampler_overhead.py"), "--quick",
                           "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())["results"]["10.0"]
    # The sampler thread's own CPU time: under 1% of one core at 10 Hz, and not zero
    # (a sampler that never ran would pass a bare "< 1%").
    assert 0 < result["thread_fraction_of_core_median"] < 0.01
    assert "10 Hz target < 1% of one core: met" in proc.stdout


def test_gpu_validation_tiny_cpu_runs_the_protocol_on_a_random_init_model(tmp_path):
    """bench/gpu_validation.py's logic, on CPU with a 2-layer toy model: one cell per batch
    size through CellRunner, summaries and target verdicts written (the GPU run is the
    same code with the Llama-3.1-8B config; see docs/gpu-validation.md)."""
    out = tmp_path / "gv"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_validation.py"), "--tiny",
                           "--device", "cpu", "--batch-sizes", "2,4", "--cycles", "2",
                           "--cache", "static", "--out", str(out)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["decoding"] == {"cache_implementation": "static", "torch_compile_mode": None}
    cells = {c["batch_size"]: c for c in summary["cells"]}
    assert sorted(cells) == [2, 4]
    for batch, cell in cells.items():
        assert len(cell["cycles"]) == 2
        # Fixed output length: every request ran to exactly output_tokens (8 in --tiny).
        # (each cycle repeats the workload until its energy window is long enough)
        assert all(c["output_tokens"] == batch * 8 * c["repetitions"] for c in cell["cycles"])
        assert cell["energy_per_output_token_j_mean"] > 0
        assert cell["output_tokens_per_s_mean"] > 0 and cell["itl_ms_p50_median"] > 0
        assert cell["idle_power_w"] is not None
    # The model was built once from config.json (random init) and reused by the second cell.
    assert cells[2]["load_duration_s"] > cells[4]["load_duration_s"]
    # No NVIDIA GPU here: the counter-vs-power target is reported as not shown, with why.
    assert summary["targets"]["counter_vs_power"]["met"] is None
    assert "not 8 vs 128" in summary["targets"]["batch_scaling"]["why"]
    runs = (out / "runs.csv").read_text().splitlines()
    assert len(runs) == 1 + 4 and "energy_per_output_token_j" in runs[0]


def test_scale_quick_plans_dry_runs_and_aggregates_every_cell(tmp_path):
    out = tmp_path / "scale.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "scale.py"), "--quick",
                           "--workdir", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {r["stage"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"plan", "dryrun", "aggregate_runs", "aggregate_requests"}
    for row in rows.values():
        # Every stage saw all 100 cells (the bench itself checks the counts it reports).
        assert row["n_cells"] == 100 and row["cells"] == 100
        assert row["duration_s"] > 0 and 50 < row["peak_rss_mib"] < 2048
    # Planning 100 cells is far inside the 10,000-cell budget of 2 s.
    assert rows["plan"]["duration_s"] < 2.0
    assert rows["aggregate_runs"]["runs_rows"] == 300


def test_harness_overhead_quick_compares_both_paths(tmp_path):
    out = tmp_path / "overhead.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "harness_overhead.py"), "--quick",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert len(result["ratios"]) == result["repeats"] == 2
    assert result["bare_tokens_per_s_median"] > 0 and result["measured_tokens_per_s_median"] > 0
    assert result["ratio_median"] > 0


def test_meter_read_cost_quick_times_every_available_source(tmp_path):
    out = tmp_path / "reads.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "meter_read_cost.py"), "--quick",
                           "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["estimate"]["median_us"] > 0


def test_scale_commits_alternates_two_checkouts_and_writes_the_doc(tmp_path):
    """`--commits OLD NEW`: `snakemake -n` on each commit's own checkout, alternated, and the
    table written into the marked block of the doc (replaced, not appended, on a rerun)."""
    doc = tmp_path / "scale.md"
    doc.write_text("# Scale\n\n<!-- scale:commits -->\nold numbers\n<!-- /scale:commits -->\n"
                   "\nafter\n")
    out = tmp_path / "commits.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "scale.py"), "--commits",
                           "HEAD", ".", "--sizes", "100", "--rounds", "2", "--max-ratio", "100",
                           "--workdir", str(tmp_path / "work"), "--json", str(out),
                           "--doc", str(doc)], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (result,) = json.loads(out.read_text())["commits"]
    old, new = result["commits"]
    assert len(old["dryrun_s"]) == len(new["dryrun_s"]) == 2
    assert (tmp_path / "work" / f"tree-{old['resolved']}" / "Snakefile").is_file()
    assert "working tree" in new["resolved"]
    assert abs(result["ratio_new_over_old"] - new["median_s"] / old["median_s"]) < 1e-9
    # Alternated: round 1 runs OLD first, round 2 NEW first (printed in running order).
    order = [line.split()[3] for line in proc.stdout.splitlines() if line.startswith("dryrun")]
    assert order == ["HEAD", ".", ".", "HEAD"]
    text = doc.read_text()
    assert "old numbers" not in text and text.count("<!-- scale:commits -->") == 1
    assert "new ÷ old = **" in text and text.endswith("\nafter\n")
