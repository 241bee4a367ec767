"""Each cell's workload (dataset, arrival, concurrency or rate, burstiness, length policies)
and the study's name reach the runs rows, the summary, the report table and the ML.ENERGY
export, declared once in the column registry (`results.schema.WORKLOAD`)."""

from __future__ import annotations

import pandas as pd
from conftest import small_study

from llm_energy.analysis.export import configuration
from llm_energy.analysis.report_data import table_spec
from llm_energy.analysis.summary import summarise
from llm_energy.results import schema
from llm_energy.results.io import RUN_COLUMNS
from llm_energy.study.config import validate_study
from llm_energy.study.matrix import expand
from llm_energy.study.workload_sweep import BUILTIN_CORPUS, workload_columns


def _cells():
    study = validate_study(small_study(
        backends={"transformers": {"batch_size": [2]}, "vllm": {"mode": ["offline", "server"]}},
        workload={"num_prompts": 4, "output_tokens": 8, "arrival": "gamma", "burstiness": 0.5,
                  "request_rate_per_s": [1.5, 3.0],
                  "input_tokens": {"distribution": "lognormal", "mean": 20.0, "std": 8.0,
                                   "min": 4, "max": 64}}))
    cells, _ = expand(study)
    return cells


def _columns(cell):
    from llm_energy.backends import registry

    return workload_columns(cell.config["workload"],
                            registry.get(cell.backend).is_server(cell.settings))


def test_workload_columns_are_the_declared_ones_and_tell_sweep_cells_apart():
    cells = _cells()
    for cell in cells:
        assert list(_columns(cell)) == list(schema.WORKLOAD)
    server = sorted((_columns(c) for c in cells if c.settings.get("mode") == "server"),
                    key=lambda c: c["request_rate_per_s"])
    assert [c["request_rate_per_s"] for c in server] == [1.5, 3.0]
    assert server[0] == {
        "dataset": BUILTIN_CORPUS, "arrival": "gamma", "concurrency": None,
        "request_rate_per_s": 1.5, "burstiness": 0.5,
        "input_length_policy": "lognormal(mean=20, std=8, min=4, max=64)",
        "output_length_policy": "8"}
    for offline in (c for c in cells if c.settings.get("mode") != "server"):
        columns = _columns(offline)
        assert columns["arrival"] == "all-at-once"
        assert columns["request_rate_per_s"] is None and columns["burstiness"] is None
    assert workload_columns({"arrival": "closed", "concurrency": 4, "input_tokens": 16,
                             "output_tokens": 8}, server=True)["concurrency"] == 4
    assert workload_columns({"dataset": {"path": "/data/chat.jsonl"}, "arrival": "closed",
                             "input_tokens": "dataset", "output_tokens": 8},
                            server=False)["dataset"] == "/data/chat.jsonl"


def _runs_rows() -> list[dict]:
    rows = []
    for cell_id, rate in (("aaaaaaaaaaa1", 1.5), ("aaaaaaaaaaa2", 3.0)):
        for k in range(2):
            row = {name: None for name in RUN_COLUMNS}
            row.update(schema_version=1, cell_id=cell_id, cycle=k, model="m", backend="vllm",
                       mode="server", device="cpu", status="ok", warnings=[],
                       energy_source="estimate", total_energy_j=80.0, output_tokens=80,
                       energy_per_output_token_j=1.0, requests=4, duration_s=1.0,
                       dataset=BUILTIN_CORPUS, arrival="poisson", request_rate_per_s=rate,
                       input_length_policy="16", output_length_policy="8")
            rows.append(row)
    return rows


def test_summary_report_and_export_carry_the_workload_and_the_study():
    summary = summarise(pd.DataFrame(_runs_rows()), study="rates")
    assert list(summary["study"]) == ["rates", "rates"]
    assert list(summary["request_rate_per_s"]) == [1.5, 3.0]
    assert list(summary["arrival"]) == ["poisson", "poisson"]
    assert schema.present_workload(summary) == [
        "study", "dataset", "arrival", "request_rate_per_s", "input_length_policy",
        "output_length_policy"]
    # The report's table (drawn in the page from table_spec): the workload columns, values
    # as written in the study (whole rates without .0).
    table = table_spec(summary)
    (model, columns), = table["models"]
    for header in ("study", "arrival", "request_rate_per_s", "input_length_policy"):
        assert header in columns
    rate = columns.index("request_rate_per_s")
    assert [table["rows"][c]["s"][rate] for c in ("aaaaaaaaaaa1", "aaaaaaaaaaa2")] == ["1.5", "3"]
    exported = [configuration(row, ["mode"])["llm_energy"] for _, row in summary.iterrows()]
    assert [e["study"] for e in exported] == ["rates", "rates"]
    assert [e["workload"]["request_rate_per_s"] for e in exported] == [1.5, 3.0]
    assert exported[0]["workload"]["arrival"] == "poisson"
    assert exported[0]["workload"]["concurrency"] is None


def test_a_failed_cell_carries_its_workload_too(tmp_path):
    from llm_energy.execution.runner import write_failed_cell

    (server, *_) = [c for c in _cells() if c.settings.get("mode") == "server"]
    write_failed_cell({**server.config, "cell_id": server.cell_id}, tmp_path, "boom")
    row = pd.read_parquet(tmp_path / "runs.parquet").iloc[0]
    assert row["status"] == "failed"
    assert (row["arrival"], row["request_rate_per_s"], row["burstiness"]) == ("gamma", 1.5, 0.5)


def test_recommend_groups_by_the_swept_workload_columns():
    from llm_energy.analysis.recommend import workload_columns

    base = {"model": "m", "status": "ok", "dataset": BUILTIN_CORPUS, "input_length_policy": "16",
            "output_length_policy": "8", "burstiness": None, "concurrency": None}
    closed = pd.DataFrame([{**base, "backend": "transformers", "arrival": "all-at-once",
                            "request_rate_per_s": None},
                           {**base, "backend": "vllm", "arrival": "closed",
                            "request_rate_per_s": None}])
    assert workload_columns(closed) == []  # an offline and a server cell: one workload
    rates = pd.DataFrame([{**base, "backend": "vllm", "arrival": "poisson",
                           "request_rate_per_s": r} for r in (2.0, 4.0)])
    assert workload_columns(rates) == ["request_rate_per_s"]
