"""The column registry is the data contract: docs/data-contract.md is generated from it, and
every view (Parquet schemas, summary, report, compare, export) derives from it."""

import subprocess
import sys
from pathlib import Path

import pytest

from llm_energy.analysis import compare, export, report
from llm_energy.results import contract, schema
from llm_energy.results.io import RUN_COLUMNS

DOC = Path(__file__).resolve().parent.parent / "docs" / "data-contract.md"


def test_committed_data_contract_is_current():
    text = DOC.read_text()
    assert text == contract.render(text), \
        "docs/data-contract.md is stale: run `make data-contract`"
    for name in contract.SECTIONS:  # every section is in the document
        assert f"<!-- BEGIN GENERATED: {name} -->" in text


def test_cli_check_fails_on_a_stale_copy(tmp_path):
    stale = tmp_path / "contract.md"
    stale.write_text(DOC.read_text().replace("| `duration_s` |", "| `duration_seconds` |"))
    run = [sys.executable, "-m", "llm_energy.cli", "data-contract", str(stale)]
    assert subprocess.run([*run, "--check"], capture_output=True).returncode == 1
    assert subprocess.run([*run, "--write"], capture_output=True).returncode == 0
    assert stale.read_text() == DOC.read_text()
    assert subprocess.run([*run, "--check"], capture_output=True).returncode == 0


def test_render_refuses_an_unknown_section():
    with pytest.raises(KeyError, match="no generated section"):
        contract.render("<!-- BEGIN GENERATED: nope -->\n<!-- END GENERATED: nope -->")


def test_settings_and_declared_columns_are_disjoint():
    declared = {*schema.RUNS, *schema.DERIVED, *schema.SUMMARY}
    assert not declared & set(schema.setting_names())
    assert {"batch_size", "max_num_seqs", "dtype"} <= set(schema.setting_names())
    assert all(name.startswith(("server_", "gpu_")) for name, c in schema.RUNS.items() if c.optional)


def test_views_derive_from_the_registry():
    assert list(RUN_COLUMNS) == [n for n, c in schema.RUNS.items() if not c.optional]
    assert [m for m, *_ in report.TABLE_COLUMNS] == [c.name for c in schema.report_columns()]
    assert schema.compare_metrics() == compare.DEFAULT_METRICS
    # Registry export names either fill the app's Configuration fields or sit in our own
    # `llm_energy` object; the app's fields that are metrics come from the registry.
    assert {"energy_per_token_joules", "avg_power_watts", "median_itl_ms"} <= set(export.EXPORTED)
    assert set(export.DETAIL_FIELDS) <= set(export.APP_FIELDS)
    # Every column a view names is declared.
    for name in (*compare.DEFAULT_METRICS, *(m for m, *_ in report.TABLE_COLUMNS),
                 *(c for by_window in export.EXPORTED.values() for c in by_window.values())):
        assert schema.column(name) is not None, name
