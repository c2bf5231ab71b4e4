"""Checkers of notebook 04: each passes the reference answer, fails plausible wrong answers, and reports stubs."""

import torch
import torch.nn.functional as F
from _exercise_cases import checker_tests, stub  # noqa: F401

from minigpt.exercises.nb04 import (
    check_block_forward,
    check_block_param_count,
    check_layer_norm,
    check_rms_norm,
    check_swiglu,
)


# ---- 04.1 layer norm
def layer_norm(x, weight, bias, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


def ln_wrong_dim(x, w, b, eps):
    mu, var = x.mean(0, keepdim=True), x.var(0, keepdim=True, unbiased=False)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def ln_in_place(x, w, b, eps):
    x -= x.mean(-1, keepdim=True)
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w + b


LN_MUTANTS = {
    "unbiased variance": (lambda x, w, b, eps: (x - x.mean(-1, keepdim=True))
                          / torch.sqrt(x.var(-1, keepdim=True) + eps) * w + b, r"unbiased"),
    "statistics over dim 0": (ln_wrong_dim, r"LAST"),
    "no gain and bias": (lambda x, w, b, eps: F.layer_norm(x, x.shape[-1:], eps=eps), r"gamma|write layer norm"),
    "eps outside the sqrt": (lambda x, w, b, eps: (x - x.mean(-1, keepdim=True))
                             / (x.std(-1, keepdim=True, unbiased=False) + eps) * w + b, r"outside the square root"),
    "calls F.layer_norm": (lambda x, w, b, eps: F.layer_norm(x, x.shape[-1:], w, b, eps), r"write layer norm yourself"),
    "calls nn.LayerNorm": (lambda x, w, b, eps: _ln_module(x, w, b, eps), r"write layer norm yourself"),
    "weight and bias swapped": (lambda x, w, b, eps: layer_norm(x, b, w, eps), r"swapped"),
    "statistics over every dim": (lambda x, w, b, eps: (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + eps) * w + b,
                                  r"not centred"),
    "subtracts the mean in place": (ln_in_place, r"in place"),
}


def _ln_module(x, w, b, eps):
    m = torch.nn.LayerNorm(x.size(-1), eps=eps)
    with torch.no_grad():
        m.weight.copy_(w)
        m.bias.copy_(b)
    return m(x)


# ---- 04.2 RMSNorm
def rms_norm(x, weight, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rms_in_place(x, w, eps):
    x /= torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return x * w


RMS_MUTANTS = {
    "centred (layer norm)": (lambda x, w, eps: rms_norm(x - x.mean(-1, keepdim=True), w, eps), r"layer norm"),
    "sum of squares": (lambda x, w, eps: x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + eps) * w, r"SUM"),
    "no gain": (lambda x, w, eps: x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps), r"gain"),
    "eps outside the sqrt": (lambda x, w, eps: x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * w,
                             r"outside the square root"),
    "divides by the std": (lambda x, w, eps: x / torch.sqrt(x.var(-1, keepdim=True) + eps) * w, r"standard deviation"),
    "gain added": (lambda x, w, eps: x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) + w, r"added"),
    "mean over dim 0": (lambda x, w, eps: x / torch.sqrt(x.pow(2).mean(0, keepdim=True) + eps) * w,
                        r"last dimension"),
    "in place": (rms_in_place, r"in place"),
}


# ---- 04.3 parameter count
def count(d, f, activation, bias):
    ln = 2 * (2 * d if bias else d)
    attn = d * 3 * d + d * d + (4 * d if bias else 0)
    n_fc = 2 * f if activation == "swiglu" else f
    mlp = d * n_fc + f * d + ((n_fc + d) if bias else 0)
    return ln + attn + mlp


COUNT_MUTANTS = {
    "no layer norms": (lambda d, f, a, bias: count(d, f, a, bias) - 2 * (2 * d if bias else d), r"layer norms"),
    "SwiGLU with one input projection": (lambda d, f, a, bias: count(d, f, "gelu", bias), r"TWO"),
    "no linear biases": (lambda d, f, a, bias: count(d, f, a, False) + (2 * d if bias else 0), r"biases"),
    "12 d^2": (lambda d, f, a, bias: 12 * d * d, r"you counted"),
    "12 d^2 + 13 d whatever d_ff": (lambda d, f, a, bias: 12 * d * d + 13 * d, r"assumes d_ff = 4 d_model"),
    "norm biases with bias=False": (lambda d, f, a, bias: count(d, f, a, bias) + (0 if bias else 2 * d),
                                    r"layer norms have no bias"),
    "SwiGLU c_fc bias counted once": (lambda d, f, a, bias: count(d, f, a, bias) - (f if a == "swiglu" and bias
                                                                                     else 0), r"2 \* d_ff biases"),
    "no attention output projection": (lambda d, f, a, bias: count(d, f, a, bias) - d * d - (d if bias else 0),
                                       r"attn.c_proj"),
    "float result": (lambda d, f, a, bias: float(count(d, f, a, bias)), r"integer"),
}


# ---- 04.4 block forward
def block_forward(block, x, prenorm):
    if prenorm:
        x = x + block.attn(block.ln_1(x))[0]
        return x + block.mlp(block.ln_2(x))
    x = block.ln_1(x + block.attn(x)[0])
    return block.ln_2(x + block.mlp(x))


def pre_variant(attn_norm="ln_1", mlp_norm="ln_2", res_attn=True, res_mlp=True):
    def f(block, x, prenorm):
        if not prenorm:
            return block_forward(block, x, prenorm)
        a = block.attn(getattr(block, attn_norm)(x))[0]
        x = x + a if res_attn else a
        m = block.mlp(getattr(block, mlp_norm)(x))
        return x + m if res_mlp else m

    return f


def post_variant(sum_norm=True, res_mlp=True):
    def f(block, x, prenorm):
        if prenorm:
            return block_forward(block, x, prenorm)
        h = block.ln_1(x + block.attn(x)[0])
        if not res_mlp:
            return block.ln_2(block.mlp(h))
        return block.ln_2(h + block.mlp(h)) if sum_norm else h + block.ln_2(block.mlp(h))

    return f


FORWARD_MUTANTS = {
    "always pre-LN": (lambda block, x, prenorm: block_forward(block, x, True), r"post-LN"),
    "no attention residual": (pre_variant(res_attn=False), r"residual"),
    "norms swapped": (pre_variant(attn_norm="ln_2", mlp_norm="ln_1"), r"ln_1 and ln_2 are swapped"),
    "always post-LN": (lambda block, x, prenorm: block_forward(block, x, False), r"pre-LN"),
    "no feed-forward residual": (pre_variant(res_mlp=False), r"around the feed-forward"),
    "ln_1 twice": (pre_variant(mlp_norm="ln_1"), r"ln_1 for both"),
    "post-LN norms the branch, not the sum": (post_variant(sum_norm=False), r"normalises the SUM"),
    "post-LN without the feed-forward residual": (post_variant(res_mlp=False), r"around the feed-forward"),
    "forgets [0] on attention": (lambda block, x, prenorm: x + block.attn(block.ln_1(x)), r"\[0\]"),
}


# ---- 04.5 SwiGLU
def swiglu(x, w_gate, w_up, w_down):
    return (F.silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T


SWIGLU_MUTANTS = {
    "gate and up swapped": (lambda x, wg, wu, wd: swiglu(x, wu, wg, wd), r"swapped"),
    "sigmoid gate": (lambda x, wg, wu, wd: (torch.sigmoid(x @ wg.T) * (x @ wu.T)) @ wd.T, r"sigmoid"),
    "no up projection": (lambda x, wg, wu, wd: F.silu(x @ wg.T) @ wd.T, r"up projection"),
    "GELU gate": (lambda x, wg, wu, wd: (F.gelu(x @ wg.T) * (x @ wu.T)) @ wd.T, r"GELU"),
    "ReLU gate": (lambda x, wg, wu, wd: (F.relu(x @ wg.T) * (x @ wu.T)) @ wd.T, r"ReLU"),
    "silu of the product": (lambda x, wg, wu, wd: F.silu((x @ wg.T) * (x @ wu.T)) @ wd.T, r"to the product"),
    "weights not transposed": (lambda x, wg, wu, wd: (F.silu(x @ wg) * (x @ wu)) @ wd, r"\.T"),
}

CASES = [
    (check_layer_norm, layer_norm, LN_MUTANTS),
    (check_rms_norm, rms_norm, RMS_MUTANTS),
    (check_block_param_count, count, COUNT_MUTANTS),
    (check_block_forward, block_forward, FORWARD_MUTANTS),
    (check_swiglu, swiglu, SWIGLU_MUTANTS),
]


test_reference_passes, test_mutant_fails, test_stub_not_done = checker_tests(CASES)


def test_rms_norm_reference_matches_library():
    from minigpt.blocks import RMSNorm

    norm = RMSNorm(8, eps=1e-6)
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(norm(x), rms_norm(x, norm.weight, 1e-6))


def test_swiglu_reference_matches_library():
    from minigpt.blocks import FeedForward

    ff = FeedForward(8, 12, activation="swiglu", bias=False)
    w_gate, w_up = ff.c_fc.weight.chunk(2, dim=0)
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(ff(x), swiglu(x, w_gate, w_up, ff.c_proj.weight))


def test_layer_norm_ban_is_lifted_after_the_check():
    check_layer_norm(layer_norm)
    x = torch.randn(2, 4)
    torch.testing.assert_close(torch.nn.LayerNorm(4)(x), F.layer_norm(x, (4,)))
