"""`llm-energy export-merge`: several studies' ML.ENERGY exports merged into one data/ folder
the leaderboard app loads (validated by the app's types), conflicts refused in one line."""

import json
import shutil

import pandas as pd
import pytest
from test_export import FACTS, LENGTHS, summary_table
from test_mlenergy_app_schema import check_app_files

from llm_energy.analysis.export import SIDECAR, write_mlenergy
from llm_energy.analysis.export_merge import MergeConflict, merge_exports, write_merged
from llm_energy.cli import main


def study(root, name, summary=None, lengths=LENGTHS):
    """A study folder, results/<name>/mlenergy/, with the export of `summary`."""
    out = root / name / "mlenergy"
    write_mlenergy(summary_table() if summary is None else summary, out, name, FACTS, lengths)
    return root / name


def other_gpu_summary() -> pd.DataFrame:
    """The same model on another GPU, other cell ids: another configuration."""
    summary = summary_table()
    summary["cell_id"] = summary["cell_id"].str.replace("a", "b")
    summary.loc[summary["device"] == "cuda", "device_name"] = "NVIDIA A100-SXM4-80GB"
    summary.loc[summary["device"] == "cpu", "device_name"] = "Intel Xeon 8480"
    return summary


def other_lengths():
    return {k.replace("a", "b"): [n * 3 for n in v] for k, v in LENGTHS.items()}


def test_two_studies_merge_into_one_app_folder(tmp_path):
    a = study(tmp_path, "h100")
    b = study(tmp_path, "a100", other_gpu_summary(), other_lengths())
    out = tmp_path / "data"
    assert main(["export-merge", str(a), str(b / "mlenergy"), "--out", str(out)]) == 0
    check_app_files(out)  # the app's types and loader paths, every task and model detail
    index = json.loads((out / "index.json").read_text())
    assert index["tasks"] == ["h100", "a100"]
    assert index["architectures"]["llm"] == ["h100", "a100"]
    assert set(index["models"]) == {"llama", "org/moe"}
    for task, cells in (("h100", {"aaaaaaaaaaa1", "aaaaaaaaaaa4"}),
                        ("a100", {"bbbbbbbbbbb1", "bbbbbbbbbbb4"})):
        doc = json.loads((out / "tasks" / f"{task}.json").read_text())
        assert {c["llm_energy"]["cell_id"] for c in doc["configurations"]} == cells
        assert json.loads((a if task == "h100" else b).joinpath(
            "mlenergy", "tasks", f"{task}.json").read_text())["configurations"] == \
            doc["configurations"]  # copied unchanged
    sidecar = json.loads((out / SIDECAR).read_text())
    assert sidecar["exported"] == 4
    # Each study's left-out cells, with the study they come from.
    assert sorted((x["cell_id"], x["study"].split("/")[-2]) for x in sidecar["left_out"]) == [
        ("aaaaaaaaaaa2", "h100"), ("aaaaaaaaaaa3", "h100"),
        ("bbbbbbbbbbb2", "a100"), ("bbbbbbbbbbb3", "a100")]


def test_same_task_from_two_studies_concatenates_and_rebins_the_model_histogram(tmp_path):
    a = study(tmp_path / "site1", "chat")
    b = study(tmp_path / "site2", "chat", other_gpu_summary(), other_lengths())
    docs = merge_exports([a, b])
    assert len(docs["tasks/chat.json"]["configurations"]) == 4
    detail = docs["models/llama__chat.json"]
    assert [c["gpu_model"] for c in detail["configurations"]] == \
        ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"]
    # Lengths 60..100 and 180..300: other bins, so the model histogram is rebuilt over both;
    # every request is still counted once (8 + 8).
    hist = detail["output_length_distribution"]
    assert sum(hist["counts"]) == 16 and len(hist["bins"]) == 51
    assert hist["bins"][0] == 60.0 and hist["bins"][-1] == 300.0
    assert any("models/llama__chat.json" in n for n in docs[SIDECAR]["notes"])
    write_merged([a, b], tmp_path / "data")
    check_app_files(tmp_path / "data")


def test_the_same_configuration_from_two_studies_is_refused(tmp_path, capsys):
    a = study(tmp_path / "site1", "chat")
    b = tmp_path / "site2" / "chat"
    shutil.copytree(a, b)  # the same study measured twice (or copied)
    out = tmp_path / "data"
    with pytest.raises(MergeConflict, match="in both .*site1/chat/mlenergy and .*site2"):
        merge_exports([a, b])
    assert main(["export-merge", str(a), str(b), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "task 'chat': model 'llama'" in err
    assert not out.exists()  # nothing written


def test_refuses_a_model_with_other_facts_and_an_existing_export(tmp_path, capsys):
    a = study(tmp_path, "h100")
    bigger = {**FACTS, "llama": type(FACTS["llama"])(70_000_000_000, 70_000_000_000,
                                                     "Dense Transformer")}
    b = tmp_path / "a100"
    write_mlenergy(other_gpu_summary(), b / "mlenergy", "a100", bigger, other_lengths())
    with pytest.raises(MergeConflict, match="model 'llama' has other total_params_billions"):
        merge_exports([a, b])
    out = tmp_path / "data"
    assert main(["export-merge", str(a), "--out", str(out)]) == 0
    assert main(["export-merge", str(a), "--out", str(out)]) == 1
    assert "already holds an export" in capsys.readouterr().err
    assert main(["export-merge", str(a), "--out", str(out), "--force"]) == 0
    assert main(["export-merge", str(tmp_path / "nothing"), "--out", str(out / "x")]) == 1
