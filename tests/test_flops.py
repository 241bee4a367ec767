"""Analytic FLOPs (measure/flops.py) against torch's own count of what transformers
`generate` computes. On CPU, `FlopCounterMode` counts the matmuls (`aten.mm`, `aten.bmm`) but
not the fused SDPA kernel, so the matmuls are compared with SDPA attention and the attention
scores by formula, from the difference eager attention makes."""

import pytest

from llm_energy.measure.flops import Architecture, peak_flops, request_flops

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PROMPT, NEW, BATCH = 24, 6, 2


def counted_flops(model, vocab):
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(1)
    ids = torch.randint(3, vocab, (BATCH, PROMPT))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW,
                             min_new_tokens=NEW, do_sample=False, pad_token_id=0)
    assert out.shape == (BATCH, PROMPT + NEW)
    return counter.get_total_flops()


def matmul_only(arch):
    """request_flops without the attention scores: body per processed token, LM head per
    output token."""
    return (PROMPT + NEW - 1) * arch.body_flops_per_token() + NEW * arch.lm_head_flops()


def build(config_class, model_class, **kwargs):
    torch.manual_seed(0)
    config = config_class(vocab_size=1000, hidden_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                          max_position_embeddings=256, tie_word_embeddings=False,
                          bos_token_id=1, eos_token_id=2, **kwargs)
    return config, model_class(config).eval()


def test_dense_gqa_model_matches_torch_with_attention_by_formula():
    from transformers import LlamaConfig, LlamaForCausalLM

    # GQA (4 query heads, 2 KV heads) with head_dim 24 set apart from hidden / heads = 16.
    config, model = build(LlamaConfig, LlamaForCausalLM, intermediate_size=128)
    arch = Architecture.from_config(config.to_dict())
    assert (arch.num_kv_heads, arch.head_dim) == (2, 24)
    sdpa = counted_flops(model, arch.vocab_size)
    # Matmuls: the LM head on the last prompt position and each decode step only.
    assert BATCH * matmul_only(arch) == pytest.approx(sdpa, rel=0.02)
    model.set_attn_implementation("eager")
    eager = counted_flops(model, arch.vocab_size)
    # Eager attention multiplies the whole PROMPT x PROMPT score matrix (masked, not skipped),
    # then one query over PROMPT + j keys at decode step j.
    decode_keys = sum(PROMPT + j for j in range(1, NEW))
    assert eager - sdpa == pytest.approx(
        BATCH * arch.attention_flops_per_token(PROMPT * PROMPT + decode_keys), rel=1e-9)
    # The analytic count is causal: PROMPT (PROMPT + 1) / 2 keys in the prefill.
    causal = arch.attention_flops_per_token(PROMPT * (PROMPT + 1) / 2 + decode_keys)
    assert request_flops(arch, PROMPT, NEW) == pytest.approx(matmul_only(arch) + causal)


def test_the_demo_model_as_the_pipeline_builds_it(demo_model_dir):
    import json

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(demo_model_dir).eval()
    arch = Architecture.from_config(json.loads((demo_model_dir / "config.json").read_text()))
    assert BATCH * matmul_only(arch) == pytest.approx(counted_flops(model, arch.vocab_size), rel=0.02)


MOE_MODELS = {
    # Qwen3-MoE: 8 experts, 2 per token, expert width 32; layer 0 dense (mlp_only_layers).
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  {"intermediate_size": 96, "moe_intermediate_size": 32, "num_experts": 8,
                   "num_experts_per_tok": 2, "decoder_sparse_step": 1, "mlp_only_layers": [0]}),
    # Qwen2-MoE: plus a shared expert of width 48 behind a hidden -> 1 sigmoid gate.
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  {"intermediate_size": 96, "moe_intermediate_size": 32, "num_experts": 8,
                   "num_experts_per_tok": 2, "shared_expert_intermediate_size": 48,
                   "decoder_sparse_step": 1}),
    # Mixtral: 4 experts of width intermediate_size, 2 per token, in every layer.
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                {"intermediate_size": 40, "num_local_experts": 4, "num_experts_per_tok": 2}),
}


@pytest.mark.parametrize("family", sorted(MOE_MODELS))
def test_moe_model_counts_the_activated_experts(family):
    config_name, model_name, kwargs = MOE_MODELS[family]
    config, model = build(getattr(transformers, config_name), getattr(transformers, model_name),
                          **kwargs)
    arch = Architecture.from_config(config.to_dict())
    assert arch.is_moe
    # transformers' default experts kernel (grouped_mm) computes only the routed
    # (token, expert) pairs but torch's counter does not see it; "eager" loops over the hit
    # experts with counted matmuls, the same work.
    model.set_experts_implementation("eager")
    assert BATCH * matmul_only(arch) == pytest.approx(counted_flops(model, arch.vocab_size), rel=0.02)


def test_moe_layers_by_family_and_shared_experts():
    base = {"hidden_size": 64, "num_hidden_layers": 6, "num_attention_heads": 4,
            "vocab_size": 100, "intermediate_size": 256}
    qwen = Architecture.from_config({**base, "num_experts": 8, "num_experts_per_tok": 2,
                                     "moe_intermediate_size": 32, "decoder_sparse_step": 2,
                                     "mlp_only_layers": [5]})
    assert qwen.moe_layers == 2  # layers 1 and 3 ((i + 1) % 2 == 0, 5 kept dense)
    deepseek = Architecture.from_config({**base, "n_routed_experts": 16, "num_experts_per_tok": 4,
                                         "moe_intermediate_size": 32, "n_shared_experts": 2,
                                         "first_k_dense_replace": 1, "moe_layer_freq": 1})
    assert (deepseek.moe_layers, deepseek.shared_intermediate_size) == (5, 64)
    llama4 = Architecture.from_config({"text_config": {
        **base, "model_type": "llama4_text", "num_local_experts": 16, "num_experts_per_tok": 1,
        "intermediate_size": 64, "intermediate_size_mlp": 256, "interleave_moe_layer_step": 2}})
    assert (llama4.moe_layers, llama4.intermediate_size, llama4.shared_intermediate_size) == (3, 256, 64)
    # A MoE layer per token: router 2*64*16, one routed + one shared expert of 3 matrices.
    dense_part = llama4.layer_flops_per_token(False) - 2 * 64 * 256 * 3
    assert llama4.layer_flops_per_token(True) == dense_part + 2 * 64 * 16 + 2 * (2 * 64 * 64 * 3)
    with pytest.raises(ValueError, match="latent attention"):
        Architecture.from_config({**base, "kv_lora_rank": 512})


def test_gqa_and_decode_context():
    mha = Architecture(64, 2, 4, 4, 16, 128, 1000)
    gqa = Architecture(64, 2, 4, 1, 16, 128, 1000)
    assert gqa.matmul_flops_per_token() < mha.matmul_flops_per_token()
    # The third output token is decode step 2: it attends over the 8 prompt keys + 2.
    step = request_flops(mha, 8, 3) - request_flops(mha, 8, 2)
    assert step == pytest.approx(mha.matmul_flops_per_token() + mha.attention_flops_per_token(10))
    # The LM head is charged once per output token, not per prompt position.
    assert request_flops(mha, 8, 1) == pytest.approx(
        8 * mha.body_flops_per_token() + mha.lm_head_flops() + mha.attention_flops_per_token(36))


def test_peak_table():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("Some CPU") is None
