"""Convert a GGUF file into a `save_pretrained` directory that every backend reads.

transformers reads GGUF files (with the `gguf` package; `accelerate` for the loading) and
dequantizes the weights; its `save_pretrained` refuses a model loaded that way ("quantized
with gguf and is not serializable"), and vLLM refuses a config whose `quantization_config`
says `gguf`. So the loaded model is saved as the plain model it now is: the quantizer and the
`quantization_config` entry removed, weights in the spec's dtype (safetensors; tied embeddings
saved once), the generation config, and the tokenizer with the chat template the GGUF file
carries. Run once per model by the Snakemake rule `gguf_model` (resources/models/gguf/<name>).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

#: What the conversion records beside the model: the source file and the dtype.
SOURCE_FILE = "gguf_source.json"


class GgufConversionError(RuntimeError):
    """The converted directory is not what the backends can read; `str()` says what."""


def convert_gguf(gguf_file: str | os.PathLike, out_dir: str | os.PathLike,
                 dtype: str = "bfloat16", spec: dict[str, Any] | None = None) -> Path:
    """Write the model of `gguf_file` to `out_dir` with weights in `dtype` (created
    atomically: a temporary directory, then a rename); `spec` (the study's `gguf:` entry) is
    recorded beside it. Returns `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = Path(gguf_file).resolve()
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name,
                                                 dtype=getattr(torch, dtype))
    # The weights are plain tensors once loaded; only the bookkeeping says "gguf".
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = source.name
    if tokenizer.eos_token_id is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    (tmp / SOURCE_FILE).write_text(json.dumps(
        {"gguf_file": str(source), "size_bytes": source.stat().st_size, "dtype": dtype,
         "spec": spec or {}}, indent=2))
    check_converted(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def check_converted(model_dir: str | os.PathLike) -> None:
    """Raise `GgufConversionError` unless the directory has weights, a config without
    `quantization_config` and a tokenizer with a chat template."""
    directory = Path(model_dir)
    config = json.loads((directory / "config.json").read_text())
    if "quantization_config" in config:
        raise GgufConversionError(f"{directory}/config.json still has quantization_config")
    if not any(directory.glob("*.safetensors")):
        raise GgufConversionError(f"{directory} has no safetensors weights")
    if not has_chat_template(directory):
        raise GgufConversionError(f"{directory}: the tokenizer has no chat template (the GGUF "
                                  "file carries none: tokenizer.chat_template)")


def has_chat_template(model_dir: str | os.PathLike) -> bool:
    """Whether the saved tokenizer has a chat template (transformers 5 writes it to
    chat_template.jinja; older releases into tokenizer_config.json)."""
    directory = Path(model_dir)
    if (directory / "chat_template.jinja").is_file():
        return bool((directory / "chat_template.jinja").read_text().strip())
    config_file = directory / "tokenizer_config.json"
    return config_file.is_file() and bool(json.loads(config_file.read_text()).get("chat_template"))
