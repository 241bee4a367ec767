"""The workload file in the pipeline: a study on a local chat dataset builds one workload file
(the `workload` rule), the measure job reads its token ids, and editing the dataset rebuilds
the file and reruns the cell."""

import json

import pandas as pd
import pytest
from conftest import dry_run_jobs, run_snakemake, small_study, study_dir, write_config

from llm_energy.workload.build import read_workload

pytestmark = pytest.mark.e2e


def _chat(path, n, salt=""):
    rows = [{"conversations": [
        {"from": "human", "value": f"{salt}write a function number {i} " + "that sorts " * i},
        {"from": "gpt", "value": "def f(x):\n    return sorted(x)\n" * (1 + i % 3)}]}
        for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_dataset_study_reads_the_workload_file(tmp_path):
    data = tmp_path / "chat.jsonl"
    _chat(data, 12)
    study = small_study(
        backends={"transformers": {"batch_size": [2]}},
        workload={"num_prompts": 5, "output_tokens": 4, "seed": 1,
                  "dataset": {"path": str(data), "format": "sharegpt",
                              "max_input_tokens": 200}},
        measurement={"cycles": 1, "idle_duration_s": 0.2, "threads": 1,
                     "warmup": {"min_runs": 0, "max_runs": 0}})
    config = write_config(tmp_path, study)
    from llm_energy.backends import registry

    run_snakemake(tmp_path, config, "--until", registry.get("transformers").rule_name)
    (workload_file,) = (tmp_path / "resources" / "workloads").glob("*.parquet")
    built = read_workload(workload_file)
    (cell,) = [p.parent for p in (study_dir(tmp_path) / "cells").glob("*/*/*/runs.parquet")]
    requests = pd.read_parquet(cell / "requests.parquet")
    # Per-request input lengths are the dataset records' token counts, once per repetition of
    # the workload (a cycle repeats it until its energy window is long enough).
    reps = int(pd.read_parquet(cell / "runs.parquet")["repetitions"].sum())
    assert sorted(requests["input_tokens"]) == sorted(len(p) for p in built.prompts * reps)
    assert len({len(p) for p in built.prompts}) > 1
    provenance = json.loads((cell / "provenance.json").read_text())
    assert provenance["workload"]["token_ids_sha256"] == built.token_ids_sha256
    assert provenance["workload"]["file"] == str(workload_file.relative_to(tmp_path))
    assert dry_run_jobs(tmp_path, config).get("measure") is None
    # Editing the dataset rebuilds the workload file and reruns its cell, nothing else new.
    _chat(data, 12, salt="please ")
    jobs = dry_run_jobs(tmp_path, config)
    assert jobs.get("workload") == 1 and jobs.get("measure") == 1, jobs


def test_dataset_prompts_longer_than_the_context_are_refused_before_any_job(tmp_path,
                                                                           demo_model_dir):
    """Dataset prompts have their token counts only once tokenised: the plan-time preflight
    (the workload rule's own code, run in memory with the model's tokenizer) refuses them with
    one line naming the key and the limit, and no job runs (tests/test_preflight.py has the
    other cases)."""
    data = tmp_path / "chat.jsonl"
    _chat(data, 6)  # prompt i has about 2 × i + 8 tokens: the longest over 12
    study = small_study(
        models=[{"name": "tiny", "path": str(demo_model_dir)}],
        backends={"vllm": {"mode": ["offline"], "max_model_len": 20}},
        workload={"num_prompts": 6, "output_tokens": 8,
                  "dataset": {"path": str(data), "format": "sharegpt"}},
        measurement={"cycles": 1, "idle_duration_s": 0.2, "threads": 1,
                     "warmup": {"min_runs": 0, "max_runs": 0}})
    proc = run_snakemake(tmp_path, write_config(tmp_path, study), check=False)
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines()
             if line.startswith("llm-energy: config error: workload.dataset.max_input_tokens: "
                                "record ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "more than backends.vllm.max_model_len = 20; set it to drop longer prompts" \
        in lines[0]
    assert not (tmp_path / "resources").exists() and not (tmp_path / "results").exists()
