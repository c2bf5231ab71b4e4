"""Positional encodings against the paper's formula; blocks against torch.nn reference layers."""

import math

import pytest
import torch
import torch.nn.functional as F

from minigpt.blocks import FeedForward, RMSNorm, TransformerBlock
from minigpt.positional import RotaryEmbedding, apply_rotary, sinusoidal_encoding


@pytest.mark.parametrize("pos,i", [(0, 0), (1, 0), (7, 3), (50, 10), (123, 31)])
def test_sinusoidal_matches_paper_formula(pos, i):
    d = 64
    pe = sinusoidal_encoding(200, d)
    angle = pos / 10000 ** (2 * i / d)
    assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
    assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)


def test_sinusoidal_shift_is_a_fixed_rotation():
    d, k = 16, 5
    pe = sinusoidal_encoding(64, d)
    # block-diagonal rotation by k * w_i, independent of the starting position p
    rot = torch.zeros(d, d)
    for i in range(d // 2):
        a = k / 10000 ** (2 * i / d)
        rot[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = torch.tensor([[math.cos(a), -math.sin(a)],
                                                                 [math.sin(a), math.cos(a)]])
    for p in (0, 3, 20, 40):
        torch.testing.assert_close(pe[p] @ rot, pe[p + k], atol=1e-5, rtol=1e-4)


def test_rope_scores_depend_only_on_offset():
    torch.manual_seed(0)
    hs = 16
    rope = RotaryEmbedding(hs, max_len=64)
    q, k = torch.randn(hs), torch.randn(hs)

    def score(m, n):
        cos_m, sin_m = rope(1, m)
        cos_n, sin_n = rope(1, n)
        return (apply_rotary(q.view(1, hs), cos_m, sin_m) @ apply_rotary(k.view(1, hs), cos_n, sin_n).t()).item()

    for offset in (0, 1, 7):
        s = [score(m + offset, m) for m in (0, 5, 30, 50)]
        assert max(s) - min(s) < 1e-4, s
    assert abs(score(3, 0) - score(9, 0)) > 1e-3  # ...and does change with the offset
    # rotation preserves the norm of every vector
    cos, sin = rope(10)
    x = torch.randn(10, hs)
    torch.testing.assert_close(apply_rotary(x, cos, sin).norm(dim=-1), x.norm(dim=-1))


def _copy_encoder_layer(ours: TransformerBlock, theirs: torch.nn.TransformerEncoderLayer) -> None:
    with torch.no_grad():
        ours.attn.c_attn.weight.copy_(theirs.self_attn.in_proj_weight)
        ours.attn.c_attn.bias.copy_(theirs.self_attn.in_proj_bias)
        ours.attn.c_proj.weight.copy_(theirs.self_attn.out_proj.weight)
        ours.attn.c_proj.bias.copy_(theirs.self_attn.out_proj.bias)
        ours.mlp.c_fc.weight.copy_(theirs.linear1.weight)
        ours.mlp.c_fc.bias.copy_(theirs.linear1.bias)
        ours.mlp.c_proj.weight.copy_(theirs.linear2.weight)
        ours.mlp.c_proj.bias.copy_(theirs.linear2.bias)
        ours.ln_1.load_state_dict(theirs.norm1.state_dict())
        ours.ln_2.load_state_dict(theirs.norm2.state_dict())


@pytest.mark.parametrize("prenorm,activation", [(False, "relu"), (False, "gelu"), (True, "relu")])
def test_block_matches_torch_transformer_encoder_layer(prenorm, activation):
    torch.manual_seed(0)
    d, h, ff = 32, 4, 64
    theirs = torch.nn.TransformerEncoderLayer(d, h, ff, dropout=0.0, activation=activation, batch_first=True,
                                              norm_first=prenorm).eval()
    ours = TransformerBlock(d, h, ff, activation=activation, prenorm=prenorm).eval()
    # LayerNorm init is ones/zeros; perturb so a swapped norm would be caught
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.05 * torch.randn_like(p))
    _copy_encoder_layer(ours, theirs)
    x = torch.randn(2, 6, d)
    out, _ = ours(x)
    torch.testing.assert_close(out, theirs(x), atol=1e-5, rtol=1e-4)
    # with a causal mask too
    causal = torch.nn.Transformer.generate_square_subsequent_mask(6)
    ours.causal = True
    torch.testing.assert_close(ours(x)[0], theirs(x, src_mask=causal), atol=1e-5, rtol=1e-4)


def test_rmsnorm_matches_torch_rmsnorm():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16)
    ours, theirs = RMSNorm(16, eps=1e-5), torch.nn.RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        w = torch.randn(16)
        ours.weight.copy_(w)
        theirs.weight.copy_(w)
    torch.testing.assert_close(ours(x), theirs(x))


def test_swiglu_feed_forward_matches_formula():
    torch.manual_seed(0)
    ff = FeedForward(8, 12, activation="swiglu", bias=False)
    x = torch.randn(2, 3, 8)
    w_gate, w_up = ff.c_fc.weight[:12], ff.c_fc.weight[12:]
    ref = (F.silu(x @ w_gate.t()) * (x @ w_up.t())) @ ff.c_proj.weight.t()
    torch.testing.assert_close(ff(x), ref)


def test_unknown_activation_and_norm_are_refused():
    with pytest.raises(ValueError, match="unknown activation"):
        FeedForward(8, 16, activation="tanh")
    with pytest.raises(ValueError, match="unknown norm"):
        TransformerBlock(8, 2, norm="batchnorm")
