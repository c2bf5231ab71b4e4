"""LoRA from scratch (minigpt.lora) against the base layer, its own merge, and peft."""

import copy

import pytest
import torch
import torch.nn as nn

from minigpt import GPT, GPTConfig
from minigpt.lora import LoRALinear, apply_lora, count_trainable, lora_state_dict, merge_lora

CFG = GPTConfig(vocab_size=23, block_size=16, n_layer=2, n_head=2, n_embd=16)


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(CFG).eval()


def test_zero_B_equals_base_layer():
    torch.manual_seed(0)
    base = nn.Linear(12, 7)
    lora = LoRALinear(copy.deepcopy(base), r=3, alpha=6)
    x = torch.randn(4, 5, 12)
    torch.testing.assert_close(lora(x), base(x), rtol=0, atol=0)
    assert lora.scaling == 2.0
    assert torch.count_nonzero(lora.lora_A) > 0  # A random, else B would get no gradient


def test_forward_is_W_plus_scaled_BA_and_merge_matches():
    torch.manual_seed(1)
    base = nn.Linear(10, 6)
    lora = LoRALinear(copy.deepcopy(base), r=2, alpha=5)
    with torch.no_grad():
        lora.lora_B.normal_()
    x = torch.randn(3, 10)
    w = base.weight + (5 / 2) * lora.lora_B @ lora.lora_A  # the paper's W + (alpha/r) B A
    expected = x @ w.T + base.bias
    torch.testing.assert_close(lora(x), expected, rtol=1e-5, atol=1e-5)
    lora.merge()
    assert lora.merged
    torch.testing.assert_close(lora(x), expected, rtol=1e-5, atol=1e-5)
    lora.unmerge()
    torch.testing.assert_close(lora.base.weight, base.weight, rtol=1e-6, atol=1e-6)


def test_apply_lora_freezes_everything_else_and_counts():
    model = apply_lora(tiny_gpt(), targets=("c_attn",), r=4, alpha=8)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A" in n or ".lora_B" in n for n in trainable)
    assert len(trainable) == 2 * CFG.n_layer
    # c_attn: 16 -> 48; per layer r * (in + out) = 4 * (16 + 48)
    n_train, n_total = count_trainable(model)
    assert n_train == CFG.n_layer * 4 * (16 + 48)
    assert n_total == tiny_gpt().num_params() + n_train
    assert set(lora_state_dict(model)) == {n for n in model.state_dict() if "lora_" in n}
    # a training step moves only the adapters
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    idx = torch.randint(0, CFG.vocab_size, (2, 8))
    model.train()
    _, loss = model(idx, idx)
    loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    # dL/dA = scaling * B^T (...) is 0 while B = 0, so the first step moves B only
    assert changed == {n for n in trainable if "lora_B" in n}


def test_merge_lora_gives_plain_linear_same_logits():
    model = apply_lora(tiny_gpt(), r=2, alpha=4)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            nn.init.normal_(m.lora_B, std=0.1)
    idx = torch.randint(0, CFG.vocab_size, (2, 10))
    before, _ = model(idx)
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    after, _ = model(idx)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_bad_arguments_explain_the_fix():
    with pytest.raises(ValueError, match="no nn.Linear named"):
        apply_lora(tiny_gpt(), targets=("q_proj",))
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(4, 4), r=8)


def test_matches_peft_after_copying_A_and_B():
    peft = pytest.importorskip("peft")
    ours = apply_lora(tiny_gpt(), r=4, alpha=8)
    theirs = peft.get_peft_model(tiny_gpt(), peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                              target_modules=["c_attn"]))
    assert count_trainable(ours) == tuple(theirs.get_nb_trainable_parameters())
    idx = torch.randint(0, CFG.vocab_size, (2, 12))
    base_logits = tiny_gpt()(idx)[0]
    torch.testing.assert_close(ours(idx)[0], base_logits)  # B = 0 at init: both start at the base model
    torch.testing.assert_close(theirs(idx)[0], base_logits)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for i in range(CFG.n_layer):
            mine = ours.transformer.h[i].attn.c_attn
            peft_layer = theirs.base_model.model.transformer.h[i].attn.c_attn
            A = torch.randn(mine.lora_A.shape, generator=g)
            B = torch.randn(mine.lora_B.shape, generator=g) * 0.1
            mine.lora_A.copy_(A)
            mine.lora_B.copy_(B)
            peft_layer.lora_A["default"].weight.copy_(A)
            peft_layer.lora_B["default"].weight.copy_(B)
    a, _ = ours(idx)
    b, _ = theirs(idx)  # peft passes a custom model's (logits, loss) through
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a, tiny_gpt()(idx)[0], atol=1e-3)  # the adapters do change the output
