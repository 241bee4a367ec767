"""Comparing two studies: per-cell differences, non-overlapping 95% intervals marked."""

import subprocess
import sys

import pandas as pd
import pytest

from llm_energy.analysis.compare import compare, intervals_overlap


def study(energy: dict[str, tuple[float, float, float] | None], extra: str | None = None) -> pd.DataFrame:
    rows = []
    for i, (cell, values) in enumerate(energy.items()):
        row = {"cell_id": cell, "model": "m", "backend": "transformers", "batch_size": i + 1,
               "status": "ok" if values is not None else "failed", "cycles": 3}
        if values is not None:
            mean, low, high = values
            row.update(energy_per_output_token_j=mean, energy_per_output_token_j_ci95_low=low,
                       energy_per_output_token_j_ci95_high=high, output_tokens_per_s=100.0)
        rows.append(row)
    if extra:
        rows.append({"cell_id": extra, "model": "m", "backend": "transformers", "batch_size": 99,
                     "status": "ok", "cycles": 3, "energy_per_output_token_j": 1.0})
    return pd.DataFrame(rows)


def test_intervals_overlap():
    assert intervals_overlap(1, 2, 1.5, 3) is True
    assert intervals_overlap(1, 2, 2, 3) is True      # touching counts as overlapping
    assert intervals_overlap(1, 2, 2.1, 3) is False
    assert intervals_overlap(1, None, 2.1, 3) is None


def test_compare_marks_non_overlapping_cells():
    before = study({"c1": (1.0, 0.9, 1.1), "c2": (1.0, 0.9, 1.1), "c3": (1.0, float("nan"), float("nan")),
                    "c4": None}, extra="old")
    after = study({"c1": (1.05, 0.95, 1.15), "c2": (0.5, 0.45, 0.55), "c3": (0.5, 0.4, 0.6),
                   "c4": (1.0, 0.9, 1.1)}, extra="new")
    diff = compare(before, after, ["energy_per_output_token_j", "output_tokens_per_s"])
    energy = diff[diff["metric"] == "energy_per_output_token_j"].set_index("cell_id_before")
    assert energy.loc["c1", "significant"] is False and energy.loc["c1", "ci_overlap"] is True
    assert energy.loc["c2", "significant"] is True
    assert energy.loc["c2", "diff"] == pytest.approx(-0.5)
    assert energy.loc["c2", "rel_diff_pct"] == pytest.approx(-50.0)
    # One study has no interval: neither marked nor hidden, and the note says why.
    assert energy.loc["c3", "significant"] is None and "fewer than 2 cycles" in energy.loc["c3", "note"]
    notes = diff[diff["metric"].isna()].set_index("cell_id_before")["note"].to_dict()
    assert notes["c4"] == "failed in before"
    assert "only in before" in notes.values() and "only in after" in notes.values()
    assert set(energy.loc["c2", "settings"].split(", ")) == {"batch_size=2"}


def test_compare_on_settings_matches_across_cell_ids():
    before = study({"c1": (1.0, 0.9, 1.1)})
    after = study({"zz": (2.0, 1.9, 2.1)})
    assert compare(before, after)["metric"].isna().all()  # no cell_id in common
    diff = compare(before, after, ["energy_per_output_token_j"], on="settings")
    assert len(diff) == 1 and diff.iloc[0]["significant"] == True  # noqa: E712
    assert (diff.iloc[0]["cell_id_before"], diff.iloc[0]["cell_id_after"]) == ("c1", "zz")


def test_cli_writes_csv(tmp_path):
    before, after = tmp_path / "before.parquet", tmp_path / "after.parquet"
    study({"c1": (1.0, 0.9, 1.1), "c2": (1.0, 0.9, 1.1)}).to_parquet(before)
    study({"c1": (1.0, 0.9, 1.1), "c2": (2.0, 1.9, 2.1)}).to_parquet(after)
    out = tmp_path / "diff.csv"
    proc = subprocess.run([sys.executable, "-m", "llm_energy.cli", "compare", str(before),
                           str(after), "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "1 metric(s) whose 95% confidence intervals do not overlap" in proc.stderr
    table = pd.read_csv(out)
    marked = table[table["significant"] == True]  # noqa: E712
    assert list(marked["cell_id_before"]) == ["c2"]
    assert list(marked["metric"]) == ["energy_per_output_token_j"]


def test_compare_on_settings_ignores_per_cycle_server_metrics():
    # Server backends add per-cycle `server_*` columns; they are metrics, not settings, so
    # two studies of the same configuration match whatever the server's gauges read.
    before = study({"c1": (1.0, 0.9, 1.1)}).assign(server_avg_batch_size=1.5,
                                                    server_metric_samples=12)
    after = study({"zz": (2.0, 1.9, 2.1)}).assign(server_avg_batch_size=0.55,
                                                   server_metric_samples=9)
    diff = compare(before, after, ["energy_per_output_token_j"], on="settings")
    assert len(diff) == 1 and diff.iloc[0]["metric"] == "energy_per_output_token_j"
    assert diff.iloc[0]["settings"] == "batch_size=1"
