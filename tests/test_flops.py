import json

import pytest

from llm_energy.measure.flops import Architecture, peak_flops, request_flops


def test_analytic_flops_match_torch_flop_counter(demo_model_dir):
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(demo_model_dir, attn_implementation="eager")
    arch = Architecture.from_config(json.loads((demo_model_dir / "config.json").read_text()))
    n = 32
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randint(0, arch.vocab_size, (1, n)))
    counted = counter.get_total_flops()
    # The counter sees the full n x n score matrix; the analytic causal count attends to
    # i + 1 keys at position i. Compare like with like, then check the causal count.
    dense = n * arch.matmul_flops_per_token() + arch.attention_flops_per_token(n * n)
    assert dense == pytest.approx(counted, rel=0.05)
    assert request_flops(arch, n, 1) == pytest.approx(counted, rel=0.05)


def test_gqa_and_decode_context():
    mha = Architecture(64, 2, 4, 4, 16, 128, 1000)
    gqa = Architecture(64, 2, 4, 1, 16, 128, 1000)
    assert gqa.matmul_flops_per_token() < mha.matmul_flops_per_token()
    # The third output token is decode step 2: it attends over the 8 prompt keys + 2.
    step = request_flops(mha, 8, 3) - request_flops(mha, 8, 2)
    assert step == pytest.approx(mha.matmul_flops_per_token() + mha.attention_flops_per_token(10))


def test_peak_table():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("Some CPU") is None
