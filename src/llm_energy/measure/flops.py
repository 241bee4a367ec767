"""Forward-pass FLOPs as an inference engine computes them, from a model's config (one
multiply-add = 2 FLOPs). Matmuls only: norms, activations, softmax and RoPE are left out.

Per token and layer: Q/K/V/O projections (GQA: K and V have `num_kv_heads` heads of
`head_dim`, which the config may set apart from hidden/heads), and the MLP: three matrices
when gated (Llama/Qwen/Mistral), two otherwise. In a mixture-of-experts layer: the router
(hidden x experts), the `experts_per_token` routed experts of `moe_intermediate_size`, and
any shared experts, always active. The LM head runs once per output token: on the last
prompt position (which gives the first output token) and on each later decode step; an engine
(transformers `generate`, vLLM) computes no logits for the other prompt positions. Attention
is causal: position i of a prompt attends to i + 1 keys, decode step j to input + j keys.
Embedding lookups cost no FLOPs. docs/methodology.md says how this was checked against torch.
"""

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
    """The shapes that set a decoder's FLOPs. `num_layers` counts all decoder layers, of which
    `moe_layers` are mixture-of-experts layers (the rest use the dense MLP of
    `intermediate_size`). `shared_intermediate_size` is the total width of the always-active
    shared experts; `shared_expert_gate` a hidden -> 1 gate on them (Qwen2-MoE)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    gated_mlp: bool = True
    moe_layers: int = 0
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    shared_intermediate_size: int = 0
    shared_expert_gate: bool = False

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Architecture:
        """From a Hugging Face `config.json` (its `text_config` for multimodal models).
        Raises KeyError for a missing key and ValueError for an attention this module does
        not model (DeepSeek's multi-head latent attention)."""
        text = config.get("text_config", config)
        if text.get("kv_lora_rank"):
            raise ValueError("multi-head latent attention (kv_lora_rank) is not modelled")
        hidden = text["hidden_size"]
        heads = text["num_attention_heads"]
        layers = text["num_hidden_layers"]
        act = str(text.get("hidden_act", text.get("hidden_activation", "silu")))
        experts = int(text.get("num_experts") or text.get("num_local_experts")
                      or text.get("n_routed_experts") or 0)
        moe: dict[str, Any] = {}
        dense_intermediate = text.get("intermediate_size")
        if experts:
            model_type = str(text.get("model_type", ""))
            moe = {"num_experts": experts, "experts_per_token": int(text["num_experts_per_tok"]),
                   "moe_intermediate_size": int(text.get("moe_intermediate_size")
                                                or text["intermediate_size"]),
                   "moe_layers": len(_moe_layer_indices(text, layers))}
            if text.get("shared_expert_intermediate_size"):  # Qwen2-MoE
                moe["shared_intermediate_size"] = int(text["shared_expert_intermediate_size"])
                moe["shared_expert_gate"] = True
            elif text.get("n_shared_experts"):  # DeepSeek-MoE family
                moe["shared_intermediate_size"] = \
                    int(text["n_shared_experts"]) * moe["moe_intermediate_size"]
            elif model_type.startswith("llama4"):  # one shared expert of the expert width
                moe["shared_intermediate_size"] = moe["moe_intermediate_size"]
                dense_intermediate = text.get("intermediate_size_mlp", dense_intermediate)
        return cls(
            hidden_size=hidden,
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=text.get("num_key_value_heads") or heads,
            head_dim=text.get("head_dim") or hidden // heads,
            intermediate_size=int(dense_intermediate or 0),
            vocab_size=text["vocab_size"],
            gated_mlp=text.get("model_type") not in ("gpt2", "opt") and "gelu_new" not in act,
            **moe,
        )

    @property
    def is_moe(self) -> bool:
        return self.moe_layers > 0

    def _mlp_flops(self, width: int) -> float:
        return 2 * self.hidden_size * width * (3 if self.gated_mlp else 2)

    def layer_flops_per_token(self, moe: bool) -> float:
        """Matmul FLOPs of one decoder layer for one token, attention scores excluded."""
        h, a, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        projections = 2 * h * a + 2 * 2 * h * kv + 2 * a * h
        if not moe:
            return projections + self._mlp_flops(self.intermediate_size)
        router = 2 * h * self.num_experts
        routed = self.experts_per_token * self._mlp_flops(self.moe_intermediate_size)
        shared = self._mlp_flops(self.shared_intermediate_size) if self.shared_intermediate_size else 0
        gate = 2 * h if self.shared_expert_gate else 0
        return projections + router + routed + shared + gate

    def body_flops_per_token(self) -> float:
        """Matmul FLOPs of every decoder layer for one token (no LM head, no attention scores).
        MoE layers count only the experts a token is routed to: what the engine must compute."""
        dense_layers = self.num_layers - self.moe_layers
        return (dense_layers * self.layer_flops_per_token(False)
                + self.moe_layers * self.layer_flops_per_token(True))

    def lm_head_flops(self) -> float:
        """One position's logits: hidden x vocab."""
        return 2 * self.hidden_size * self.vocab_size

    def matmul_flops_per_token(self) -> float:
        """Body + LM head: the matmul FLOPs of one decode step of one request."""
        return self.body_flops_per_token() + self.lm_head_flops()

    def attention_flops_per_token(self, context_tokens: float) -> float:
        """QK^T and attention x V for one query over `context_tokens` keys (all query heads:
        GQA shares K/V between heads but every query head does its own products)."""
        return self.num_layers * 2 * 2 * self.num_heads * self.head_dim * context_tokens


def _moe_layer_indices(text: dict[str, Any], layers: int) -> list[int]:
    """Which decoder layers are MoE layers, by each family's config keys."""
    if "first_k_dense_replace" in text:  # DeepSeek: dense first k, then every moe_layer_freq-th
        k, freq = int(text["first_k_dense_replace"]), int(text.get("moe_layer_freq") or 1)
        return [i for i in range(layers) if i >= k and i % freq == 0]
    if text.get("moe_layers") is not None:  # Llama 4 lists them
        return [int(i) for i in text["moe_layers"]]
    if "interleave_moe_layer_step" in text:
        step = int(text["interleave_moe_layer_step"] or 1)
        return list(range(step - 1, layers, step))
    if "decoder_sparse_step" in text:  # Qwen2/3-MoE
        step = int(text["decoder_sparse_step"] or 1)
        dense = set(text.get("mlp_only_layers") or [])
        return [i for i in range(layers) if i not in dense and (i + 1) % step == 0]
    return list(range(layers))  # Mixtral and others: every layer


def request_flops(arch: Architecture, input_tokens: int, output_tokens: int) -> float:
    """Forward FLOPs to prefill `input_tokens` (causal: token i attends to i+1 keys) and then
    decode `output_tokens - 1` more tokens (the first comes out of the prefill). The LM head
    runs `output_tokens` times: on the last prompt position and at each decode step."""
    body = arch.body_flops_per_token()
    prefill = input_tokens * body + arch.attention_flops_per_token(input_tokens * (input_tokens + 1) / 2)
    decode_steps = max(0, output_tokens - 1)
    # Decode step j (1-based) attends over input_tokens + j keys.
    decode_context = decode_steps * input_tokens + decode_steps * (decode_steps + 1) / 2
    decode = decode_steps * body + arch.attention_flops_per_token(decode_context)
    return prefill + decode + max(0, output_tokens) * arch.lm_head_flops()


def peak_flops(device_name: str | None) -> float | None:
    if not device_name:
        return None
    for name, flops in PEAK_FLOPS_BF16.items():
        if device_name.startswith(name):
            return flops
    return None
