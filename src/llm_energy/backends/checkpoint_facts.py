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

import json
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
