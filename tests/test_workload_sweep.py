"""Workload sweep axes: `concurrency`, `request_rate_per_s` and `dataset` as lists, crossed
only into the cells of backends that use them; offline cells kept, all requests at once."""

from __future__ import annotations

import csv
import io
import json

import pytest
from conftest import small_study

from llm_energy.study.config import ConfigError, validate_study
from llm_energy.study.matrix import expand
from llm_energy.study.plan import plan_from_config

BACKENDS = {"transformers": {"batch_size": [2]}, "vllm": {"mode": ["offline", "server"]}}


def _study(**workload) -> dict:
    return small_study(backends=BACKENDS, workload={"num_prompts": 4, "input_tokens": 16,
                                                   "output_tokens": 8, **workload})


def _ids(study: dict) -> dict[tuple, str]:
    cells, pruned = expand(validate_study(study))
    assert not pruned
    return {(c.backend, c.settings.get("mode")): c.cell_id for c in cells}


def test_cell_ids_of_studies_without_workload_sweeps_are_unchanged():
    # Computed with the code before workload sweeps existed (main at fe8c4fb).
    assert _ids(_study()) == {("transformers", None): "23afcdab2e5e",
                              ("vllm", "offline"): "ed995ca8980a",
                              ("vllm", "server"): "2b3237a3928e"}
    assert _ids(_study(concurrency=2)) == {("transformers", None): "6f483ce0148a",
                                           ("vllm", "offline"): "f43245ac085e",
                                           ("vllm", "server"): "07a26a8cbf11"}
    # Before, this study's offline cells were pruned; its server cell keeps its id.
    assert _ids(_study(arrival="poisson", request_rate_per_s=2.0))[("vllm", "server")] \
        == "5176cb50b5de"


def test_rate_sweep_crosses_server_cells_only_and_keeps_offline_cells_all_at_once():
    plan = plan_from_config(_study(arrival="poisson", request_rate_per_s=[1.0, 2.0, 4.0]))
    cells = list(plan.cells.values())
    server = [c for c in cells if c.settings.get("mode") == "server"]
    offline = [c for c in cells if c.settings.get("mode") != "server"]
    # 3 rates x 1 server cell + 1 cell for each offline engine (not crossed): 5, none pruned.
    assert len(cells) == 5 and not plan.pruned
    assert sorted(c.config["workload"]["request_rate_per_s"] for c in server) == [1.0, 2.0, 4.0]
    assert {c.backend for c in offline} == {"transformers", "vllm"} and len(offline) == 2
    for cell in offline:
        workload = cell.config["workload"]
        assert (workload["arrival"], workload["request_rate_per_s"]) == ("closed", None)
    # The rate-2 server cell is the same measurement as the unswept study's.
    assert any(c.cell_id == "5176cb50b5de" for c in server)
    # One workload file per variant: 3 schedules + the offline one, shared by both engines.
    assert len(plan.workloads) == 4
    assert len({plan.workload_file(c.cell_id) for c in offline}) == 1
    assert len({plan.workload_file(c.cell_id) for c in server}) == 3
    rows = list(csv.DictReader(io.StringIO(plan.matrix_csv())))
    by_id = {r["cell_id"]: r for r in rows}
    for cell in offline:
        assert by_id[cell.cell_id]["arrival"] == "all-at-once"
        assert by_id[cell.cell_id]["request_rate_per_s"] == ""
        assert by_id[cell.cell_id]["status"] == "planned"
    assert sorted(by_id[c.cell_id]["request_rate_per_s"] for c in server) == ["1.0", "2.0", "4.0"]


def test_concurrency_sweep_crosses_server_cells_only():
    cells, _ = expand(validate_study(_study(concurrency=[1, 4])))
    server = [c for c in cells if c.settings.get("mode") == "server"]
    assert sorted(c.config["workload"]["concurrency"] for c in server) == [1, 4]
    assert len(cells) == 4  # 2 server + transformers + vllm offline
    assert all(c.config["workload"]["concurrency"] is None for c in cells if c not in server)


def test_dataset_sweep_crosses_every_backend(tmp_path):
    paths = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"prompt": f"{name} {i}"}) + "\n" for i in range(4)))
        paths.append(str(path))
    study = _study(dataset=[{"path": p} for p in paths], input_tokens="dataset")
    plan = plan_from_config(study)
    assert len(plan.cells) == 6  # 2 datasets x 3 backend cells
    for backend in ("transformers", "vllm"):
        used = {c.config["workload"]["dataset"]["path"] for c in plan.cells.values()
                if c.backend == backend}
        assert used == set(paths)
    assert len(plan.workloads) == 2
    rows = list(csv.DictReader(io.StringIO(plan.matrix_csv())))
    assert sorted(r["dataset"] for r in rows) == sorted(paths * 3)


@pytest.mark.parametrize("workload, key", [
    ({"concurrency": [1, 2, 2]}, "workload.concurrency"),
    ({"arrival": "constant", "request_rate_per_s": [1.0, 1.0]}, "workload.request_rate_per_s"),
    ({"arrival": "poisson", "request_rate_per_s": 1.0, "concurrency": [1, 2]},
     "workload.concurrency"),
    ({"concurrency": []}, "workload.concurrency"),
])
def test_bad_sweeps_refused_with_one_line_naming_the_key(workload, key):
    with pytest.raises(ConfigError) as info:
        validate_study(_study(**workload))
    message = str(info.value)
    assert f"'{key}'" in message and "\n" not in message


def test_repeated_dataset_refused(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "x"}\n')
    with pytest.raises(ConfigError, match="'workload.dataset'.*repeated"):
        validate_study(_study(dataset=[{"path": str(path)}, {"path": str(path)}],
                              input_tokens="dataset"))


def test_unsorted_or_unreadable_trace_refused_at_validation(tmp_path):
    unsorted = tmp_path / "unsorted.txt"
    unsorted.write_text("0\n2\n1\n3\n")
    with pytest.raises(ConfigError, match="trace_path: .*not sorted") as info:
        validate_study(_study(arrival="trace", trace_path=str(unsorted)))
    assert "\n" not in str(info.value)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="trace_path: cannot read trace"):
        validate_study(_study(arrival="trace", trace_path=str(binary)))
    short = tmp_path / "short.txt"
    short.write_text("0\n1\n")
    with pytest.raises(ConfigError, match="trace_path: .*fewer than the 4 requests"):
        validate_study(_study(arrival="trace", trace_path=str(short)))


def test_rate_sweep_example_plans_one_cell_per_rate():
    from conftest import ROOT

    from llm_energy.study.config import load_study

    study = load_study(ROOT / "config" / "examples" / "cpu-vllm-rate-sweep.yaml")
    cells, pruned = expand(study)
    assert not pruned and study.slo is not None
    assert sorted(c.config["workload"]["request_rate_per_s"] for c in cells) == [2.0, 4.0, 8.0]


@pytest.mark.parametrize("policy, message", [
    ({"distribution": "uniform", "min": 50, "max": 10}, "max (10) must be >= min (50)"),
    ({"distribution": "lognormal", "mean": 10, "std": 2, "min": 5000, "max": 6000},
     "hold almost none of lognormal"),
])
def test_impossible_distribution_refused_by_the_study_with_one_line(policy, message):
    with pytest.raises(ConfigError) as info:
        validate_study(_study(input_tokens=policy))
    text = str(info.value)
    assert "'workload.input_tokens'" in text and message in text and "\n" not in text
