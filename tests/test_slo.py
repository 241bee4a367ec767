"""Latency SLOs: per-request test, per-cell attainment, goodput and energy per SLO-meeting
request (values computed by hand), and `slo:` as an analysis-only config section."""

import copy

import numpy as np
import pandas as pd
import pytest

from llm_energy.analysis.slo import meets_slo
from llm_energy.analysis.summary import summarise
from llm_energy.results import schema
from llm_energy.results.io import RUN_COLUMNS
from llm_energy.study import config as c
from llm_energy.study.config import ConfigError, validate_study
from llm_energy.study.identity import roles
from llm_energy.study.matrix import expand

SLO = {"ttft_ms": 200.0, "tpot_ms": 10.0, "e2e_ms": 1000.0, "target_attainment": 0.75}


def _request(cell, cycle, ttft, tpot, e2e, success=True, tokens=10):
    return {"cell_id": cell, "cycle": cycle, "success": success, "output_tokens": tokens,
            "first_token_s": 0.1, "finish_s": 0.9, "ttft_ms": ttft, "tpot_ms": tpot,
            "e2e_ms": e2e, "itl_ms": [tpot] if tpot is not None else []}


def test_a_request_meets_the_slo_only_when_every_threshold_holds():
    requests = pd.DataFrame([
        _request("a", 0, 150, 8, 900),            # meets all
        _request("a", 0, 200, 10, 1000),          # on every bound: meets (≤)
        _request("a", 0, 201, 8, 900),            # TTFT too slow
        _request("a", 0, 150, 11, 900),           # TPOT too slow
        _request("a", 0, 150, 8, 1001),           # E2E too slow
        _request("a", 0, 150, 8, 900, success=False),  # failed
        _request("a", 0, 150, None, 900, tokens=1),    # one token: no TPOT, meets it
        _request("a", 0, None, 8, 900),           # no TTFT: does not meet
    ])
    assert meets_slo(requests, SLO).tolist() == [True, True, False, False, False, False, True,
                                                 False]
    # Only TTFT checked: TPOT and E2E no longer matter.
    assert meets_slo(requests, {"ttft_ms": 200.0}).tolist() == [True, True, False, True, True,
                                                               False, True, False]


def _runs(cell, energies, duration_s=2.0):
    rows = []
    for k, energy in enumerate(energies):
        row = {name: None for name in RUN_COLUMNS}
        row.update(schema_version=1, cell_id=cell, cycle=k, model="m", backend="vllm",
                   device="cpu", status="ok", warnings=[], energy_source="estimate",
                   total_energy_j=energy, output_tokens=40, requests=4, duration_s=duration_s,
                   max_num_seqs=4)
        rows.append(row)
    return rows


def test_cell_attainment_goodput_and_energy_per_slo_request_by_hand():
    # Cycle 0: 4 requests, 3 meet (one TTFT too slow). Cycle 1: 4 requests, 1 failed and
    # 1 too slow (E2E), so 2 meet. Energy 12 J and 8 J, 2 s windows.
    requests = pd.DataFrame(
        [_request("aaaaaaaaaaa1", 0, 100, 5, 500) for _ in range(3)]
        + [_request("aaaaaaaaaaa1", 0, 300, 5, 500)]
        + [_request("aaaaaaaaaaa1", 1, 100, 5, 500) for _ in range(2)]
        + [_request("aaaaaaaaaaa1", 1, 100, 5, 500, success=False),
           _request("aaaaaaaaaaa1", 1, 100, 5, 1500)])
    runs = pd.DataFrame(_runs("aaaaaaaaaaa1", [12.0, 8.0]))
    row = summarise(runs, requests, resamples=50, slo=SLO).iloc[0]
    assert row["slo_attainment"] == pytest.approx(5 / 8)
    assert row["goodput_requests_per_s"] == pytest.approx(5 / 4.0)
    assert row["energy_per_slo_request_j"] == pytest.approx(20.0 / 5)
    assert row["energy_per_slo_output_token_j"] == pytest.approx(20.0 / 50)
    # Per-cycle ratios 12/3 = 4 and 8/2 = 4: no spread, an interval of zero width.
    assert row["energy_per_slo_request_j_ci95_low"] == pytest.approx(4.0)
    assert row["slo_attainment_ci95_low"] < 5 / 8 < row["slo_attainment_ci95_high"]
    assert row["slo_ttft_ms"] == 200.0 and row["slo_target_attainment"] == 0.75
    # Recomputed from requests.parquet rows directly, the same attainment.
    assert meets_slo(requests, SLO).mean() == pytest.approx(row["slo_attainment"])


def test_no_request_meets_the_slo_gives_no_energy_per_slo_request():
    requests = pd.DataFrame([_request("aaaaaaaaaaa1", 0, 900, 5, 500) for _ in range(4)])
    row = summarise(pd.DataFrame(_runs("aaaaaaaaaaa1", [12.0])), requests, 50, SLO).iloc[0]
    assert row["slo_attainment"] == 0.0 and row["goodput_requests_per_s"] == 0.0
    assert pd.isna(row["energy_per_slo_request_j"]) or np.isinf(row["energy_per_slo_request_j"])


def test_without_slo_the_summary_has_no_slo_columns():
    requests = pd.DataFrame([_request("aaaaaaaaaaa1", 0, 100, 5, 500) for _ in range(4)])
    summary = summarise(pd.DataFrame(_runs("aaaaaaaaaaa1", [12.0])), requests, 50)
    slo_columns = [n for n, col in schema.DERIVED.items() if col.optional and "slo" in col.optional]
    assert "slo_attainment" in slo_columns
    assert not set(slo_columns) & set(summary.columns)
    assert "slo_ttft_ms" not in summary


STUDY = {"models": [{"name": "tiny", "demo": {}}], "backends": {"transformers": {}}}


def test_slo_is_analysis_only_and_changes_no_cell_id():
    assert roles()["slo"] == c.ANALYSIS_ONLY
    base = [cell.cell_id for cell in expand(validate_study(STUDY))[0]]
    with_slo = copy.deepcopy(STUDY) | {"slo": {"ttft_ms": 50, "target_attainment": 0.99}}
    assert [cell.cell_id for cell in expand(validate_study(with_slo))[0]] == base


@pytest.mark.parametrize("slo, key", [
    ({}, "slo"), ({"target_attainment": 0.9}, "slo"), ({"ttft_ms": -1}, "slo.ttft_ms"),
    ({"ttft_ms": 100, "target_attainment": 1.5}, "slo.target_attainment"),
    ({"itl_ms": 100}, "slo.itl_ms")])
def test_bad_slo_is_refused_naming_the_key(slo, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        validate_study(STUDY | {"slo": slo})


def test_aggregate_from_cell_files_applies_the_slo(tmp_path):
    """Through the files the measurement writes (runs.parquet + requests.parquet): the
    aggregation reads every request column the SLO needs (output tokens included)."""
    from llm_energy.analysis.summary import aggregate
    from llm_energy.results.io import write_cell

    cell = "aaaaaaaaaaa1"
    requests = [_request(cell, 0, 100, 5, 500), _request(cell, 0, 300, 5, 500)]
    for r in requests:
        r.update(schema_version=1, request_id=0, input_tokens=8, arrival_s=0.0, energy_j=1.0,
                 error=None)
    runs = _runs(cell, [12.0])
    for row in runs:
        row.update(requests=2, output_tokens=20)
    write_cell(tmp_path / "c", runs, requests, [], {})
    summary = aggregate([tmp_path / "c" / "runs.parquet"], resamples=50,
                        slo={"ttft_ms": 200.0}).summary.iloc[0]
    assert summary["slo_attainment"] == pytest.approx(0.5)
    assert summary["energy_per_slo_request_j"] == pytest.approx(12.0)
    assert summary["energy_per_slo_output_token_j"] == pytest.approx(12.0 / 10)
