"""Facts about a model checkpoint read from its files, without loading it: parameter counts
(total, and activated per token for mixture-of-experts models) and the architecture label the
ML.ENERGY leaderboard uses ("Dense Transformer" or "MoE").

Parameters are counted from the safetensors headers (the tensor shapes; no weights are read).
In an MoE model the routed experts' tensors are the ones whose name contains `.experts.`; a
token runs `num_experts_per_tok` of the `num_experts` routed experts, so

    activated = total − routed_expert_params × (1 − experts_per_token ÷ experts).

Shared experts (`shared_expert`, no `.experts.` in their names) count as always active.
"""

from __future__ import annotations

import functools
import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

DENSE, MOE = "Dense Transformer", "MoE"


@dataclass(frozen=True)
class ModelFacts:
    total_params: int
    activated_params: int
    architecture: str

    @property
    def total_params_billions(self) -> float:
        return self.total_params / 1e9

    @property
    def activated_params_billions(self) -> float:
        return self.activated_params / 1e9


def tensor_shapes(model_dir: str | Path) -> dict[str, list[int]]:
    """Tensor name → shape over every `*.safetensors` file of a checkpoint directory (headers
    only); empty when there is none. Raises OSError/ValueError for an unreadable header."""
    shapes: dict[str, list[int]] = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with open(file, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        shapes.update({name: entry["shape"] for name, entry in header.items()
                       if name != "__metadata__"})
    return shapes


def count_parameters(model_dir: str | Path) -> int | None:
    """Parameters in the checkpoint's safetensors files; None if there are none."""
    shapes = tensor_shapes(model_dir)
    return sum(_numel(s) for s in shapes.values()) if shapes else None


def _numel(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def model_facts(model_dir: str | Path) -> ModelFacts | None:
    """Parameter counts and architecture of a local checkpoint (safetensors + `config.json`);
    None when the directory has no safetensors files."""
    shapes = tensor_shapes(model_dir)
    if not shapes:
        return None
    total = sum(_numel(s) for s in shapes.values())
    config_file = Path(model_dir) / "config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    text = config.get("text_config", config)
    experts = int(text.get("num_experts") or text.get("num_local_experts")
                  or text.get("n_routed_experts") or 0)
    if not experts:
        return ModelFacts(total, total, DENSE)
    per_token = int(text.get("num_experts_per_tok") or 0)
    routed = sum(_numel(s) for name, s in shapes.items() if ".experts." in name)
    inactive = round(routed * (1 - per_token / experts))
    return ModelFacts(total, total - inactive, MOE)


# ---------------------------------------------------------------- GGUF files

#: GGUF metadata value types (gguf's `GGUFValueType`): scalar struct formats by type id.
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


@dataclass(frozen=True)
class GgufHeader:
    """What a GGUF file says about itself before its tensor data: the scalar metadata (arrays,
    such as the tokenizer's vocabulary, are skipped) and the parameter count (elements of every
    tensor, as the unquantized model has them)."""

    version: int
    metadata: dict[str, object]
    parameters: int

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))


def gguf_header(path: str | Path) -> GgufHeader:
    """Read a GGUF (version 2 or 3) file's header without its weights: the standard library
    only, so that planning needs no `gguf` package. Raises ValueError for a file that is not
    GGUF or ends inside its header. Cached per file, size and modification time."""
    stat = Path(path).stat()
    return _gguf_header(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _gguf_header(path: str, size: int, mtime_ns: int) -> GgufHeader:
    with open(path, "rb") as handle:
        if size < 24:
            raise ValueError("file too short for a GGUF header")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _parse_gguf(data)


def _parse_gguf(data: mmap.mmap) -> GgufHeader:
    if data[:4] != b"GGUF":
        raise ValueError("no GGUF magic number")
    (version,) = struct.unpack_from("<I", data, 4)
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} (2 and 3 are read)")
    tensors, kvs = struct.unpack_from("<QQ", data, 8)
    offset = 24

    def string(at: int) -> tuple[str, int]:
        (length,) = struct.unpack_from("<Q", data, at)
        return bytes(data[at + 8:at + 8 + length]).decode("utf-8", "replace"), at + 8 + length

    def skip(kind: int, at: int, count: int) -> int:
        if kind in _GGUF_SCALARS:
            return at + count * struct.calcsize(_GGUF_SCALARS[kind])
        if kind == _GGUF_STRING:
            for _ in range(count):
                (length,) = struct.unpack_from("<Q", data, at)
                at += 8 + length
            return at
        if kind == _GGUF_ARRAY:
            for _ in range(count):
                inner, n = struct.unpack_from("<IQ", data, at)
                at = skip(inner, at + 12, n)
            return at
        raise ValueError(f"unknown GGUF value type {kind}")

    metadata: dict[str, object] = {}
    try:
        for _ in range(kvs):
            key, offset = string(offset)
            (kind,) = struct.unpack_from("<I", data, offset)
            offset += 4
            if kind in _GGUF_SCALARS:
                (metadata[key],) = struct.unpack_from(_GGUF_SCALARS[kind], data, offset)
                offset += struct.calcsize(_GGUF_SCALARS[kind])
            elif kind == _GGUF_STRING:
                metadata[key], offset = string(offset)
            else:
                offset = skip(kind, offset, 1)
        parameters = 0
        for _ in range(tensors):
            _, offset = string(offset)
            (dims,) = struct.unpack_from("<I", data, offset)
            shape = struct.unpack_from(f"<{dims}Q", data, offset + 4)
            offset += 4 + 8 * dims + 4 + 8  # dims, the tensor's type, its data offset
            parameters += _numel(list(shape))
    except struct.error:
        raise ValueError("the file ends inside its GGUF header") from None
    return GgufHeader(version, metadata, parameters)
