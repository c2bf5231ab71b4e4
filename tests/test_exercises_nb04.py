"""Notebook 04 checkers: the reference solution passes, plausible mistakes fail, a stub is "not done"."""

import pytest
import torch
import torch.nn.functional as F

from minigpt.exercises import ExerciseFailed
from minigpt.exercises.nb04 import (
    check_block_forward,
    check_block_param_count,
    check_layer_norm,
    check_rms_norm,
    check_swiglu,
)


def stub(*args, **kwargs):
    raise NotImplementedError("HINT")


def assert_fails(check, answer, *fragments):
    with pytest.raises(ExerciseFailed) as info:
        check(answer)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "check",
    [check_layer_norm, check_rms_norm, check_block_param_count, check_block_forward, check_swiglu],
)
def test_stub_is_not_done(check):
    result = check(stub)
    assert result.status == "not done"


# ---------------------------------------------------------------------------- 04.1 layer norm


def layer_norm(x, weight, bias, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


def test_layer_norm_reference_passes():
    assert check_layer_norm(layer_norm).passed


def test_layer_norm_mutants_fail():
    def unbiased(x, w, b, eps):
        return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + eps) * w + b

    def wrong_dim(x, w, b, eps):
        mu, var = x.mean(0, keepdim=True), x.var(0, keepdim=True, unbiased=False)
        return (x - mu) / torch.sqrt(var + eps) * w + b

    def no_affine(x, w, b, eps):
        return F.layer_norm(x, x.shape[-1:], eps=eps)

    def eps_outside(x, w, b, eps):
        mu = x.mean(-1, keepdim=True)
        return (x - mu) / (x.std(-1, keepdim=True, unbiased=False) + eps) * w + b

    assert_fails(check_layer_norm, unbiased, "unbiased")
    assert_fails(check_layer_norm, wrong_dim, "LAST")
    assert_fails(check_layer_norm, no_affine, "gamma")
    assert_fails(check_layer_norm, eps_outside)


# ---------------------------------------------------------------------------- 04.2 RMSNorm


def rms_norm(x, weight, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def test_rms_norm_reference_passes_and_matches_library():
    from minigpt.blocks import RMSNorm

    assert check_rms_norm(rms_norm).passed
    norm = RMSNorm(8, eps=1e-6)
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(norm(x), rms_norm(x, norm.weight, 1e-6))


def test_rms_norm_mutants_fail():
    def centred(x, w, eps):
        x = x - x.mean(-1, keepdim=True)
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def summed(x, w, eps):
        return x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + eps) * w

    def no_gain(x, w, eps):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    assert_fails(check_rms_norm, centred, "layer norm")
    assert_fails(check_rms_norm, summed, "SUM")
    assert_fails(check_rms_norm, no_gain, "gain")


# ---------------------------------------------------------------------------- 04.3 parameter count


def count(d, f, activation, bias):
    ln = 2 * (2 * d if bias else d)
    attn = d * 3 * d + d * d + (4 * d if bias else 0)
    n_fc = 2 * f if activation == "swiglu" else f
    mlp = d * n_fc + f * d + ((n_fc + d) if bias else 0)
    return ln + attn + mlp


def test_param_count_reference_passes():
    assert check_block_param_count(count).passed


def test_param_count_mutants_fail():
    def no_norms(d, f, a, bias):
        return count(d, f, a, bias) - 2 * (2 * d if bias else d)

    def swiglu_single(d, f, a, bias):
        return count(d, f, "gelu", bias)

    def no_biases(d, f, a, bias):
        return count(d, f, a, False) + (2 * d if bias else 0)

    def twelve_d_squared(d, f, a, bias):
        return 12 * d * d

    assert_fails(check_block_param_count, no_norms, "layer norms")
    assert_fails(check_block_param_count, swiglu_single, "TWO")
    assert_fails(check_block_param_count, no_biases, "biases")
    assert_fails(check_block_param_count, twelve_d_squared, "you counted")


# ---------------------------------------------------------------------------- 04.4 block forward


def block_forward(block, x, prenorm):
    if prenorm:
        x = x + block.attn(block.ln_1(x))[0]
        return x + block.mlp(block.ln_2(x))
    x = block.ln_1(x + block.attn(x)[0])
    return block.ln_2(x + block.mlp(x))


def test_block_forward_reference_passes():
    assert check_block_forward(block_forward).passed


def test_block_forward_mutants_fail():
    def always_pre(block, x, prenorm):
        return block_forward(block, x, True)

    def no_residual(block, x, prenorm):
        if prenorm:
            x = block.attn(block.ln_1(x))[0]
            return x + block.mlp(block.ln_2(x))
        return block_forward(block, x, prenorm)

    def swapped_norms(block, x, prenorm):
        if prenorm:
            x = x + block.attn(block.ln_2(x))[0]
            return x + block.mlp(block.ln_1(x))
        return block_forward(block, x, prenorm)

    assert_fails(check_block_forward, always_pre, "post-LN")
    assert_fails(check_block_forward, no_residual, "residual")
    assert_fails(check_block_forward, swapped_norms, "ln_1")


# ---------------------------------------------------------------------------- 04.5 SwiGLU


def swiglu(x, w_gate, w_up, w_down):
    return (F.silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T


def test_swiglu_reference_passes_and_matches_library():
    from minigpt.blocks import FeedForward

    assert check_swiglu(swiglu).passed
    ff = FeedForward(8, 12, activation="swiglu", bias=False)
    w_gate, w_up = ff.c_fc.weight.chunk(2, dim=0)
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(ff(x), swiglu(x, w_gate, w_up, ff.c_proj.weight))


def test_swiglu_mutants_fail():
    def swapped(x, wg, wu, wd):
        return swiglu(x, wu, wg, wd)

    def sigmoid_gate(x, wg, wu, wd):
        return (torch.sigmoid(x @ wg.T) * (x @ wu.T)) @ wd.T

    def no_up(x, wg, wu, wd):
        return F.silu(x @ wg.T) @ wd.T

    assert_fails(check_swiglu, swapped, "swapped")
    assert_fails(check_swiglu, sigmoid_gate, "sigmoid")
    assert_fails(check_swiglu, no_up, "up projection")
