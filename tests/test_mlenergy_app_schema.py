"""The ML.ENERGY leaderboard app's data contract, written as JSON Schemas by reading its
`src/types.ts` (ml-energy/leaderboard at commit 0cd52da: `IndexData`, `ModelInfo`,
`TaskData`, `Configuration`, `ModelDetail`, `ModelConfiguration`, `Parallelization`,
`Distribution`) and the paths its loaders fetch (`src/utils/dataLoader.ts`:
`data/index.json`, `data/tasks/${task}.json`; `ModelDetailModal.tsx`/`ComparisonModal.tsx`:
`data/models/${modelId.replace('/', '__')}__${task}.json`). Stricter than TypeScript where this
project promises more: counts are JSON integers, and our own fields live only in `llm_energy`.
`check_app_files` is used by the export's tests; the tests here show the checks can fail."""

import json
import struct
from pathlib import Path

import jsonschema
import pytest
from jsonschema import validators

from llm_energy.backends.checkpoint_facts import model_facts

NUM, STR, INT = {"type": "number"}, {"type": "string"}, {"type": "integer"}
NAMESPACE = {"llm_energy": {"type": "object"}}


def _obj(required: dict, optional: dict | None = None, extra: dict | None = None) -> dict:
    return {"type": "object", "required": list(required),
            "properties": {**required, **(optional or {}), **(extra or {})},
            "additionalProperties": False}


DISTRIBUTION = _obj({"bins": {"type": "array", "items": NUM},
                     "counts": {"type": "array", "items": INT}})
MODEL_INFO = _obj({"nickname": STR}, {"total_params_billions": NUM,
                                      "activated_params_billions": NUM,
                                      "architecture": STR, "weight_precision": STR})
INDEX = _obj({"last_updated": STR, "tasks": {"type": "array", "items": STR},
              "architectures": _obj({a: {"type": "array", "items": STR}
                                     for a in ("llm", "mllm", "diffusion")}),
              "models": {"type": "object", "additionalProperties": MODEL_INFO}})
_METRICS = {"energy_per_token_joules": NUM, "energy_per_request_joules": NUM,
            "avg_output_len": NUM, "avg_power_watts": NUM, "median_itl_ms": NUM,
            "output_throughput_tokens_per_sec": NUM, "p90_itl_ms": NUM, "p95_itl_ms": NUM,
            "p99_itl_ms": NUM, "avg_batch_size": NUM}
CONFIGURATION = _obj({"model_id": STR, "nickname": STR, "gpu_model": STR, "num_gpus": INT,
                      "total_params_billions": NUM, "activated_params_billions": NUM,
                      "architecture": STR, "weight_precision": STR,
                      "max_num_seqs": {"type": ["integer", "null"]}, "tensor_parallel": INT,
                      "expert_parallel": INT, "data_parallel": INT, **_METRICS},
                     extra=NAMESPACE)
TASK = _obj({"task": STR, "task_display_name": STR,
             "configurations": {"type": "array", "items": CONFIGURATION}},
            {"architecture": {"enum": ["llm", "mllm", "diffusion"]}})
MODEL_CONFIGURATION = _obj({"gpu_model": STR, "num_gpus": INT,
                            "max_num_seqs": {"type": ["integer", "null"]},
                            "parallelization": _obj({"tensor_parallel": INT,
                                                     "expert_parallel": INT,
                                                     "data_parallel": INT, "notes": STR}),
                            **_METRICS, "output_length_distribution": DISTRIBUTION},
                           extra=NAMESPACE)
MODEL_DETAIL = _obj({"model_id": STR, "task": STR, "total_params_billions": NUM,
                     "activated_params_billions": NUM, "architecture": STR,
                     "weight_precision": STR, "output_length_distribution": DISTRIBUTION,
                     "configurations": {"type": "array", "items": MODEL_CONFIGURATION}})

# JSON's integers only: 512.0 is not a count (jsonschema's default "integer" accepts it).
_types = validators.Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool))
Strict = validators.extend(validators.Draft202012Validator, type_checker=_types)


def validate(doc: dict, schema: dict) -> None:
    Strict(schema).validate(doc)


def detail_path(model_id: str, task: str) -> str:
    """The app's `models/${modelId.replace('/', '__')}__${task}.json`: JavaScript's
    `String.replace` with a string pattern replaces the first occurrence only."""
    return f"models/{model_id.replace('/', '__', 1)}__{task}.json"


def check_app_files(data: Path) -> None:
    """Load `data/` as the app does and validate every document it fetches."""
    index = json.loads((data / "index.json").read_text())
    validate(index, INDEX)
    for task in index["tasks"]:
        doc = json.loads((data / "tasks" / f"{task}.json").read_text())
        validate(doc, TASK)
        assert doc["task"] == task
        for model in {c["model_id"] for c in doc["configurations"]}:
            assert model in index["models"], model
            detail = json.loads((data / detail_path(model, task)).read_text())
            validate(detail, MODEL_DETAIL)
            assert detail["model_id"] == model and detail["task"] == task
            assert len(detail["configurations"]) == \
                sum(c["model_id"] == model for c in doc["configurations"])


def test_schema_rejects_what_the_issue_found():
    """The old export's faults fail these schemas: missing fields, nulls, float counts."""
    good = {"model_id": "m", "nickname": "m", "gpu_model": "H100", "num_gpus": 1,
            "total_params_billions": 8.0, "activated_params_billions": 8.0,
            "architecture": "Dense Transformer", "weight_precision": "bfloat16",
            "max_num_seqs": 8, "tensor_parallel": 1, "expert_parallel": 1, "data_parallel": 1,
            **{k: 1.0 for k in _METRICS}}
    validate(good, CONFIGURATION)
    for bad in ({**good, "gpu_model": None}, {**good, "max_num_seqs": 512.0},
                {k: v for k, v in good.items() if k != "architecture"},
                {**good, "is_stable": True}):
        with pytest.raises(jsonschema.ValidationError):
            validate(bad, CONFIGURATION)
    with pytest.raises(jsonschema.ValidationError):  # no `architectures`
        validate({"last_updated": "x", "tasks": [], "models": {}}, INDEX)


def test_detail_path_follows_javascripts_replace():
    assert detail_path("Qwen/Qwen3-14B", "gpqa") == "models/Qwen__Qwen3-14B__gpqa.json"
    assert detail_path("tiny", "t") == "models/tiny__t.json"
    assert detail_path("a/b/c", "t") == "models/a__b/c__t.json"


def _checkpoint(folder: Path, tensors: dict[str, list[int]], config: dict) -> Path:
    folder.mkdir()
    header = json.dumps({n: {"dtype": "BF16", "shape": s, "data_offsets": [0, 0]}
                         for n, s in tensors.items()}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_model_facts_dense_and_moe(tmp_path):
    dense = _checkpoint(tmp_path / "d", {"embed": [100, 10], "layer.0.mlp": [10, 40]},
                        {"hidden_size": 10})
    facts = model_facts(dense)
    assert (facts.total_params, facts.activated_params, facts.architecture) == \
        (1400, 1400, "Dense Transformer")
    # 8 experts of 100 parameters, 2 per token: 600 inactive.
    moe = _checkpoint(tmp_path / "m", {"embed": [100, 10],
                                       **{f"layers.0.mlp.experts.{i}.w": [10, 10]
                                          for i in range(8)},
                                       "layers.0.mlp.shared_expert.w": [10, 10]},
                      {"num_experts": 8, "num_experts_per_tok": 2})
    facts = model_facts(moe)
    assert (facts.total_params, facts.activated_params, facts.architecture) == \
        (1900, 1300, "MoE")
    assert facts.activated_params_billions == pytest.approx(1.3e-6)
    empty = tmp_path / "e"
    empty.mkdir()
    assert model_facts(empty) is None
