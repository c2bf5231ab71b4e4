"""Attention against PyTorch's own implementations and hand-checked invariants."""

import math

import pytest
import torch
import torch.nn.functional as F

from minigpt.attention import (
    MultiHeadAttention,
    causal_mask,
    fast_attention,
    padding_mask,
    scaled_dot_product_attention,
)


def _qkv(B=2, H=3, T=5, S=None, hs=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = T if S is None else S
    return (torch.randn(B, H, T, hs, generator=g), torch.randn(B, H, S, hs, generator=g),
            torch.randn(B, H, S, hs, generator=g))


@pytest.mark.parametrize("case", ["none", "causal", "padding", "cross", "causal+padding"])
def test_explicit_and_fast_match_torch_sdpa(case):
    S = 7 if case == "cross" else 5
    q, k, v = _qkv(S=S)
    mask, is_causal = None, False
    if case == "causal":
        is_causal = True
    if "padding" in case:
        mask = padding_mask(torch.tensor([5, 3]), S=S)  # second example: last 2 keys are padding
    ref_mask = mask
    if case == "causal+padding":
        ref_mask = mask & torch.tril(torch.ones(5, 5, dtype=torch.bool))
        is_causal = True
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=ref_mask if case == "causal+padding" else mask,
                                         is_causal=is_causal and case != "causal+padding")
    out, w = scaled_dot_product_attention(q, k, v, mask=mask, is_causal=is_causal)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_attention(q, k, v, mask=mask, is_causal=is_causal), ref, atol=1e-5, rtol=1e-5)
    # the weights agree with a softmax computed by hand from the paper's formula
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if ref_mask is not None or is_causal:
        allowed = ref_mask if ref_mask is not None else torch.tril(torch.ones(5, 5, dtype=torch.bool))
        scores = scores.masked_fill(~allowed, float("-inf"))
    torch.testing.assert_close(w, scores.softmax(-1), atol=1e-6, rtol=1e-5)


def test_rows_sum_to_one_and_causal_weights_above_diagonal_are_exactly_zero():
    q, k, v = _qkv(T=6)
    _, w = scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 6))
    above = torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)
    assert (w[..., above] == 0).all()


def test_fully_masked_query_rows_give_zeros_not_nan():
    q, k, v = _qkv(T=4)
    mask = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    mask[1, :, 2, :] = False  # query 2 of example 1 may see nothing (a padded query)
    out, w = scaled_dot_product_attention(q, k, v, mask=mask)
    fast = fast_attention(q, k, v, mask=mask)
    for t in (out, w, fast):
        assert not torch.isnan(t).any()
    assert (w[1, :, 2] == 0).all() and (out[1, :, 2] == 0).all() and (fast[1, :, 2] == 0).all()
    torch.testing.assert_close(fast, out, atol=1e-5, rtol=1e-5)


def test_causal_mask_with_offset_for_cached_queries():
    m = causal_mask(2, 5)  # the last two of five positions
    expected = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(m, expected)
    # is_causal would align top-left corners and hide keys the queries are allowed to see
    q, k, v = _qkv(T=2, S=5)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=expected)
    torch.testing.assert_close(fast_attention(q, k, v, is_causal=True), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, is_causal=True)[0], ref, atol=1e-5, rtol=1e-5)


def test_non_boolean_mask_is_refused_with_a_hint():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="boolean"):
        scaled_dot_product_attention(q, k, v, mask=torch.ones(5, 5))


def _copy_from_torch_mha(ours: MultiHeadAttention, theirs: torch.nn.MultiheadAttention) -> None:
    with torch.no_grad():
        ours.c_attn.weight.copy_(theirs.in_proj_weight)
        ours.c_attn.bias.copy_(theirs.in_proj_bias)
        ours.c_proj.weight.copy_(theirs.out_proj.weight)
        ours.c_proj.bias.copy_(theirs.out_proj.bias)


@pytest.mark.parametrize("masking", ["none", "causal", "key_padding"])
def test_multi_head_attention_matches_torch_multiheadattention(masking):
    torch.manual_seed(0)
    E, H, T = 32, 4, 6
    theirs = torch.nn.MultiheadAttention(E, H, batch_first=True).eval()
    ours = MultiHeadAttention(E, H).eval()
    _copy_from_torch_mha(ours, theirs)
    x = torch.randn(3, T, E)
    kw, ref_kw = {}, {}
    if masking == "causal":
        kw["causal"] = True
        ref_kw["attn_mask"] = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)  # torch: True = blocked
    if masking == "key_padding":
        lengths = torch.tensor([6, 4, 2])
        kw["mask"] = padding_mask(lengths, S=T)
        ref_kw["key_padding_mask"] = ~padding_mask(lengths, S=T)[:, 0, 0]
    ref_out, ref_w = theirs(x, x, x, need_weights=True, average_attn_weights=False, **ref_kw)
    out, w = ours(x, need_weights=True, **kw)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(w, ref_w, atol=1e-5, rtol=1e-4)
    out_fast, none = ours(x, **kw)
    assert none is None
    torch.testing.assert_close(out_fast, ref_out, atol=1e-5, rtol=1e-4)


def test_cross_attention_matches_torch_with_different_key_length():
    torch.manual_seed(1)
    E, H = 16, 2
    theirs = torch.nn.MultiheadAttention(E, H, batch_first=True).eval()
    ours = MultiHeadAttention(E, H, cross=True).eval()
    with torch.no_grad():
        ours.q_proj.weight.copy_(theirs.in_proj_weight[:E])
        ours.q_proj.bias.copy_(theirs.in_proj_bias[:E])
        ours.kv_proj.weight.copy_(theirs.in_proj_weight[E:])
        ours.kv_proj.bias.copy_(theirs.in_proj_bias[E:])
        ours.c_proj.weight.copy_(theirs.out_proj.weight)
        ours.c_proj.bias.copy_(theirs.out_proj.bias)
    x, ctx = torch.randn(2, 3, E), torch.randn(2, 7, E)
    ref, _ = theirs(x, ctx, ctx)
    out, w = ours(x, ctx, need_weights=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    assert w.shape == (2, H, 3, 7)


def test_grouped_query_attention_equals_heads_sharing_keys_and_values():
    torch.manual_seed(2)
    E, H, KV, T = 32, 4, 2, 5
    mha = MultiHeadAttention(E, H, n_kv_head=KV, bias=False).eval()
    x = torch.randn(2, T, E)
    out, _ = mha(x, causal=True)
    # reference: project, let query head h use key/value head h // (H // KV), plain torch softmax
    hs = E // H
    q, k, v = (x @ mha.c_attn.weight.t()).split([E, KV * hs, KV * hs], dim=-1)
    q = q.view(2, T, H, hs).transpose(1, 2)
    k = k.view(2, T, KV, hs).transpose(1, 2)[:, [h // (H // KV) for h in range(H)]]
    v = v.view(2, T, KV, hs).transpose(1, 2)[:, [h // (H // KV) for h in range(H)]]
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, T, E)
    torch.testing.assert_close(out, ref @ mha.c_proj.weight.t(), atol=1e-5, rtol=1e-4)
    # a GQA layer has fewer key/value parameters than full multi-head attention
    assert mha.c_attn.weight.shape == (E + 2 * KV * hs, E)


def test_bad_head_configuration_errors_are_clear():
    with pytest.raises(ValueError, match="not divisible by n_head"):
        MultiHeadAttention(30, 4)
    with pytest.raises(ValueError, match="multiple of n_kv_head"):
        MultiHeadAttention(32, 4, n_kv_head=3)
