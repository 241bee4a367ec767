"""Analytic forward-pass FLOPs from a model's config (one multiply-add = 2 FLOPs).

Per token and layer: Q/K/V/O projections (GQA: K and V have num_kv_heads heads), attention
scores and weighted sum over the context, and the MLP (three matrices when gated, as in
Llama/Qwen/Mistral). Plus the LM head once per token. Embedding lookups cost no FLOPs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Dense BF16/FP16 tensor-core peaks without sparsity, FLOP/s, from vendor data sheets.
PEAK_FLOPS_BF16 = {
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12,
    "NVIDIA L40S": 362e12,
    "NVIDIA A10G": 125e12,
    "NVIDIA L4": 121e12,
    "NVIDIA B200": 2250e12,
}


@dataclass(frozen=True)
class Architecture:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    gated_mlp: bool = True

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Architecture:
        text = config.get("text_config", config)
        hidden = text["hidden_size"]
        heads = text["num_attention_heads"]
        act = str(text.get("hidden_act", text.get("hidden_activation", "silu")))
        return cls(
            hidden_size=hidden,
            num_layers=text["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=text.get("num_key_value_heads") or heads,
            head_dim=text.get("head_dim") or hidden // heads,
            intermediate_size=text["intermediate_size"],
            vocab_size=text["vocab_size"],
            gated_mlp=text.get("model_type") not in ("gpt2", "opt") and "gelu_new" not in act,
        )

    def matmul_flops_per_token(self) -> float:
        h, a, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        projections = 2 * h * a + 2 * 2 * h * kv + 2 * a * h
        mlp = 2 * h * self.intermediate_size * (3 if self.gated_mlp else 2)
        return self.num_layers * (projections + mlp) + 2 * h * self.vocab_size

    def attention_flops_per_token(self, context_tokens: float) -> float:
        """QK^T and attention×V for one query over `context_tokens` keys."""
        return self.num_layers * 2 * 2 * self.num_heads * self.head_dim * context_tokens


def request_flops(arch: Architecture, input_tokens: int, output_tokens: int) -> float:
    """Forward FLOPs to prefill `input_tokens` (causal: token i attends to i+1 keys) and then
    decode `output_tokens - 1` more tokens (the first comes out of the prefill)."""
    dense = arch.matmul_flops_per_token()
    prefill = input_tokens * dense + arch.attention_flops_per_token(input_tokens * (input_tokens + 1) / 2)
    decode_steps = max(0, output_tokens - 1)
    # Decode step j (1-based) attends over input_tokens + j keys.
    decode_context = decode_steps * input_tokens + decode_steps * (decode_steps + 1) / 2
    decode = decode_steps * dense + arch.attention_flops_per_token(decode_context)
    return prefill + decode


def peak_flops(device_name: str | None) -> float | None:
    if not device_name:
        return None
    for name, flops in PEAK_FLOPS_BF16.items():
        if device_name.startswith(name):
            return flops
    return None
