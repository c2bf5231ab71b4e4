"""Checkers for notebook 04 (the transformer block).

Every reference below is built from torch built-ins (``F.layer_norm``, ``F.silu``, ``numel``) or the
formula written out, never from the student's code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._core import ExerciseFailed, checker, expect, forbid

__all__ = [
    "check_layer_norm",
    "check_rms_norm",
    "check_block_param_count",
    "check_block_forward",
    "check_swiglu",
]


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=rtol)


_LAYER_NORM_BANNED = {
    name: "the task asks you to write layer norm yourself (mean, biased variance, eps, gain and bias)"
    for name in ("torch.nn.functional.layer_norm", "torch.layer_norm", "torch.nn.functional.group_norm")
}


def _unchanged(given: torch.Tensor, original: torch.Tensor) -> None:
    expect(torch.equal(given, original), "your function changed its input x in place (x -= mean, x.sub_(...)): the "
           "caller's tensor is corrupted, and in a model that tensor is the residual stream. Compute a new tensor")


def _inputs(seed: int, shape: tuple[int, ...], scale: float = 3.0, shift: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # a non-zero mean and a large spread, so forgetting to centre or to scale is visible
    return torch.randn(shape, generator=g) * scale + shift


@checker("04.1 layer norm")
def check_layer_norm(my_layer_norm) -> None:
    """``my_layer_norm(x, weight, bias, eps)`` must equal ``F.layer_norm`` over the last dimension."""
    # the last case has a tiny spread (variance ~ eps), where the placement of eps matters
    for seed, (shape, scale) in enumerate([((2, 5, 8), 3.0), ((3, 16), 3.0), ((1, 4, 6, 32), 3.0), ((2, 8), 1e-3)]):
        x = _inputs(seed, shape, scale=scale, shift=2 * scale)
        C = shape[-1]
        g = torch.Generator().manual_seed(100 + seed)
        weight = torch.rand(C, generator=g) + 0.5
        bias = torch.randn(C, generator=g)
        eps = 1e-5
        x_in = x.clone()
        with forbid(_LAYER_NORM_BANNED):
            got = my_layer_norm(x_in, weight, bias, eps)
        want = F.layer_norm(x, (C,), weight, bias, eps)
        _unchanged(x_in, x)
        expect(isinstance(got, torch.Tensor), f"return a tensor, got {type(got).__name__}")
        expect(got.shape == x.shape, f"output shape {tuple(got.shape)} should equal the input shape {shape}")
        if _close(got, want):
            continue
        normed = F.layer_norm(x, (C,), None, None, eps)
        expect(not _close(got, normed * bias + weight), "weight and bias are swapped: gamma (weight) multiplies, "
               "beta (bias) is added: x_hat * weight + bias")
        eps_out = (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True, unbiased=False).sqrt() + eps)
        expect(not _close(got, eps_out * weight + bias), f"for input shape {shape} (a tiny spread, variance ~ eps) "
               "your eps is outside the square root: divide by sqrt(var + eps), not std + eps")
        plain = (got - bias) / weight  # undo the affine part: should be zero-mean, unit-variance rows
        mean_ok = torch.allclose(plain.mean(-1), torch.zeros(()), atol=1e-4)
        var_ok = torch.allclose(plain.var(-1, unbiased=False), torch.ones(()), atol=1e-2)
        no_affine = F.layer_norm(x, (C,), None, None, eps)
        expect(not _close(got, no_affine), "the output is normalised but weight (gamma) and bias (beta) are not "
               "applied: return weight * x_hat + bias")
        expect(mean_ok, f"for input shape {shape} the rows are not centred: subtract the mean over the LAST "
               "dimension (the features of each token), mean(-1, keepdim=True), not over the batch")
        unbiased = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True, unbiased=True) + eps)
        expect(not _close(got, unbiased * weight + bias),
               "you divided by the unbiased (N-1) standard deviation; layer norm uses the biased one: "
               "x.var(-1, unbiased=False, keepdim=True) (or mean of squared deviations)")
        expect(var_ok or scale < 1, f"for input shape {shape} the rows do not have unit variance before the "
               "affine step: divide by sqrt(var + eps) computed over the last dimension")
        expect(False, f"for input shape {shape} your output differs from F.layer_norm by up to "
               f"{(got - want).abs().max():.2e}; check where eps goes: (x - mean) / sqrt(var + eps)")
    # eps must matter for a constant row (variance 0): no division by zero
    x = torch.full((1, 4), 3.0)
    with forbid(_LAYER_NORM_BANNED):
        got = my_layer_norm(x, torch.ones(4), torch.zeros(4), 1e-5)
    expect(bool(torch.isfinite(got).all()), "a constant row gave NaN/Inf: add eps INSIDE the square root")


@checker("04.2 RMSNorm")
def check_rms_norm(my_rms_norm) -> None:
    """``my_rms_norm(x, weight, eps)`` = x / sqrt(mean(x^2) + eps) * weight over the last dimension."""
    # the last case has a tiny scale (mean square ~ eps), where the placement of eps matters
    for seed, (shape, scale) in enumerate([((2, 5, 8), 3.0), ((3, 16), 3.0), ((2, 3, 4, 12), 3.0), ((2, 8), 1e-3)]):
        x = _inputs(seed, shape, scale=scale, shift=2 * scale)
        C = shape[-1]
        weight = torch.rand(C, generator=torch.Generator().manual_seed(7 + seed)) + 0.5
        eps = 1e-6
        x_in = x.clone()
        got = my_rms_norm(x_in, weight, eps)
        want = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
        _unchanged(x_in, x)
        expect(isinstance(got, torch.Tensor) and got.shape == x.shape,
               f"return a tensor of the input's shape {shape}")
        if _close(got, want):
            continue
        expect(not _close(got, x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * weight),
               f"for input shape {shape} (tiny values, mean square ~ eps) your eps is outside the square root: "
               "x / sqrt(mean(x^2) + eps)")
        expect(not _close(got, x / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + eps) * weight)
               and not _close(got, x / torch.sqrt(x.var(-1, keepdim=True) + eps) * weight),
               "you divided by the standard deviation, which subtracts the mean; RMS is the root of the mean "
               "SQUARE of x itself: sqrt(mean(x**2) + eps)")
        expect(not _close(got, x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) + weight),
               "the gain is added; it multiplies: x / rms * weight")
        centred = F.layer_norm(x, (C,), weight, None, eps)
        expect(not _close(got, centred), "you subtracted the mean: that is layer norm. RMSNorm only rescales, "
               "x / sqrt(mean(x**2) + eps), which is cheaper and works as well in practice")
        expect(not _close(got, x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)),
               "the learned gain is missing: multiply by weight at the end")
        expect(not _close(got, x / x.pow(2).sum(-1, keepdim=True).add(eps).sqrt() * weight),
               "you used the SUM of squares; RMS is the root of the MEAN square (divide by the number of features)")
        expect(False, f"for shape {shape} your output differs from x / sqrt(mean(x^2, -1) + eps) * weight by up to "
               f"{(got - want).abs().max():.2e}; average over the last dimension")


def _reference_count(d_model: int, d_ff: int, activation: str, bias: bool) -> int:
    from ..blocks import TransformerBlock

    block = TransformerBlock(d_model, 2, d_ff, activation=activation, bias=bias)
    return sum(p.numel() for p in block.parameters())


@checker("04.3 block parameter count")
def check_block_param_count(count_block_params) -> None:
    """``count_block_params(d_model, d_ff, activation, bias)`` must match ``numel`` of a real block."""
    cases = [(64, 256, "gelu", True), (48, 96, "relu", True), (64, 172, "swiglu", True),
             (32, 128, "gelu", False), (40, 100, "swiglu", False), (768, 3072, "gelu", True)]
    for d, f, act, bias in cases:
        want = _reference_count(d, f, act, bias)
        got = count_block_params(d, f, act, bias)
        expect(isinstance(got, int) and not isinstance(got, bool) or isinstance(got, torch.Tensor)
               and not got.is_floating_point(), f"return an integer, got {type(got).__name__} ({got!r})")
        got = int(got)
        if got == want:
            continue
        what = f"d_model={d}, d_ff={f}, activation={act!r}, bias={bias}"
        expect(not (got == 12 * d * d + 13 * d and f != 4 * d),
               f"{what}: 12 d^2 + 13 d assumes d_ff = 4 d_model; here d_ff = {f}, so count c_fc and c_proj from d_ff")
        if not bias and got == want + 2 * d:
            expect(False, f"{what}: with bias=False the layer norms have no bias either (a gain of d_model each)")
        if act == "swiglu" and bias and got == want - f:
            expect(False, f"{what}: SwiGLU's fused c_fc has 2 * d_ff outputs, so 2 * d_ff biases, not d_ff")
        if got == want - (d * d + (d if bias else 0)):
            expect(False, f"{what}: you forgot the attention output projection attn.c_proj (d x d"
                   + (" + d biases)" if bias else ")"))
        ln = 2 * (2 * d if bias else d)
        if got == want - ln:
            expect(False, f"{what}: you forgot the two layer norms (a gain, and a bias when bias=True, each d_model)")
        if act == "swiglu" and got == want - d * f - (f if bias else 0):
            expect(False, f"{what}: SwiGLU has TWO input projections (gate and up), each d_model x d_ff")
        n_fc = 2 * f if act == "swiglu" else f
        if bias and got == want - (3 * d + d + n_fc + d):
            expect(False, f"{what}: the linear layers have biases when bias=True (one per output feature)")
        expect(False, f"{what}: you counted {got:,} parameters but the block has {want:,} "
               f"(difference {want - got:+,}). Count per module: ln_1, attn.c_attn (d -> 3d), attn.c_proj, "
               "ln_2, mlp.c_fc, mlp.c_proj")


@checker("04.4 pre-LN and post-LN forward")
def check_block_forward(my_block_forward) -> None:
    """``my_block_forward(block, x, prenorm)`` must reproduce ``TransformerBlock(prenorm=...)``.

    The reference is the formula written with the block's own modules, checked here against the
    library block so both conventions are pinned.
    """
    from ..blocks import TransformerBlock

    torch.manual_seed(0)
    for prenorm in (True, False):
        block = TransformerBlock(16, 2, 32, prenorm=prenorm).eval()
        with torch.no_grad():  # non-trivial norm parameters, so a missing norm is visible
            for ln in (block.ln_1, block.ln_2):
                ln.weight.uniform_(0.5, 1.5)
                ln.bias.normal_()
        x = _inputs(3, (2, 5, 16))
        with torch.no_grad():
            try:
                got = my_block_forward(block, x.clone(), prenorm)
            except TypeError as e:
                if "tuple" not in str(e):
                    raise
                raise ExerciseFailed("your code adds or normalises a tuple: block.attn(...) returns (output, weights), "
                                     "so take block.attn(...)[0]") from None
            h = x + block.attn(block.ln_1(x))[0]
            pre = h + block.mlp(block.ln_2(h))  # x + attn(ln_1(x)), then + mlp(ln_2(.))
            h = block.ln_1(x + block.attn(x)[0])
            post = block.ln_2(h + block.mlp(h))  # ln_1(x + attn(x)), then ln_2(. + mlp(.))
            want, other = (pre, post) if prenorm else (post, pre)
            lib = block(x)[0]
        expect(isinstance(got, torch.Tensor), "return the block output tensor (B, T, C)")
        expect(got.shape == x.shape, f"output shape {tuple(got.shape)} should be {tuple(x.shape)}")
        torch.testing.assert_close(want, lib)  # the written formula is what the library does
        name = "pre-LN" if prenorm else "post-LN"
        if _close(got, want):
            continue
        expect(not _close(got, other), f"{name} asked, but you computed the "
               f"{'post-LN' if prenorm else 'pre-LN'} arrangement: "
               + ("pre-LN normalises the INPUT of each branch: x + attn(ln_1(x))" if prenorm
                  else "post-LN normalises AFTER the residual add: ln_1(x + attn(x))"))
        with torch.no_grad():
            if prenorm:
                no_res = block.attn(block.ln_1(x))[0]
                no_res = no_res + block.mlp(block.ln_2(no_res))
            else:
                no_res = block.ln_2(block.mlp(block.ln_1(block.attn(x)[0])))
        expect(not _close(got, no_res), f"{name}: the residual connection around attention is missing: "
               "add the branch output back to its input (x + ...)")
        with torch.no_grad():
            a = block.attn
            if prenorm:
                h = x + a(block.ln_1(x))[0]
                variants = {
                    "the residual connection around the feed-forward is missing: y = h + mlp(ln_2(h))":
                        block.mlp(block.ln_2(h)),
                    "ln_1 and ln_2 are swapped: ln_1 goes with attention, ln_2 with the feed-forward":
                        (lambda h2: h2 + block.mlp(block.ln_1(h2)))(x + a(block.ln_2(x))[0]),
                    "you used ln_1 for both sub-layers; the feed-forward has its own norm ln_2":
                        h + block.mlp(block.ln_1(h)),
                    "you normalised the residual stream (x = ln(x) + ...): pre-LN normalises only the INPUT of each "
                    "branch and adds the branch to the un-normalised x":
                        (lambda h2: block.ln_2(h2) + block.mlp(block.ln_2(h2)))(block.ln_1(x) + a(block.ln_1(x))[0]),
                }
            else:
                h = block.ln_1(x + a(x)[0])
                variants = {
                    "the residual connection around the feed-forward is missing: y = ln_2(h + mlp(h))":
                        block.ln_2(block.mlp(h)),
                    "post-LN normalises the SUM: ln_2(h + mlp(h)), not h + ln_2(mlp(h))": h + block.ln_2(block.mlp(h)),
                    "ln_1 and ln_2 are swapped: ln_1 follows attention, ln_2 the feed-forward":
                        (lambda h2: block.ln_1(h2 + block.mlp(h2)))(block.ln_2(x + a(x)[0])),
                }
        for message, wrong in variants.items():
            expect(not _close(got, wrong), f"{name}: {message}")
        expect(False, f"{name}: output differs from the reference by up to {(got - want).abs().max():.2e}. "
               "Remember the attention module returns (output, weights): use [0]; use ln_1 with attention "
               "and ln_2 with the feed-forward")


@checker("04.5 SwiGLU")
def check_swiglu(my_swiglu) -> None:
    """``my_swiglu(x, w_gate, w_up, w_down)`` = (silu(x W_gate^T) * (x W_up^T)) W_down^T (no biases)."""
    for seed, (B, T, C, H) in enumerate([(2, 3, 8, 12), (1, 5, 16, 24)]):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(B, T, C, generator=g)
        w_gate, w_up = torch.randn(H, C, generator=g) / C**0.5, torch.randn(H, C, generator=g) / C**0.5
        w_down = torch.randn(C, H, generator=g) / H**0.5
        try:
            got = my_swiglu(x.clone(), w_gate, w_up, w_down)
        except RuntimeError as e:
            if "shapes cannot be multiplied" not in str(e):
                raise
            raise ExerciseFailed(f"a matrix product failed ({e}): the weights are stored like nn.Linear, "
                                 f"(out_features, in_features): w_gate is ({H}, {C}), so use x @ w_gate.T") from None
        gate, up = F.linear(x, w_gate), F.linear(x, w_up)  # (B, T, H)
        want = F.linear(F.silu(gate) * up, w_down)  # (B, T, C)
        expect(isinstance(got, torch.Tensor), "return a tensor")
        expect(got.shape == x.shape, f"output shape {tuple(got.shape)} should be (B, T, C) = {tuple(x.shape)}: "
               "W_down maps the hidden width back to d_model")
        if _close(got, want):
            continue
        expect(not _close(got, F.linear(gate * F.silu(up), w_down)),
               "gate and up are swapped: silu goes on x @ w_gate.T, the up projection stays linear")
        expect(not _close(got, F.linear(torch.sigmoid(gate) * up, w_down)),
               "you used sigmoid(gate); SwiGLU uses silu(gate) = gate * sigmoid(gate) (F.silu)")
        expect(not _close(got, F.linear(F.gelu(gate) * up, w_down))
               and not _close(got, F.linear(F.gelu(gate, approximate="tanh") * up, w_down)),
               "you used GELU on the gate; SwiGLU uses silu(gate) = gate * sigmoid(gate) (F.silu); GEGLU is the GELU "
               "variant")
        expect(not _close(got, F.linear(F.relu(gate) * up, w_down)), "you used ReLU on the gate (ReGLU); SwiGLU "
               "uses silu (F.silu)")
        expect(not _close(got, F.linear(F.silu(gate * up), w_down)), "you applied silu to the product; only the gate "
               "goes through silu: silu(x Wg^T) * (x Wu^T)")
        expect(not _close(got, F.linear(F.silu(gate), w_down)),
               "the up projection is missing: multiply silu(gate) element-wise by x @ w_up.T")
        expect(False, f"output differs from (silu(x Wg^T) * (x Wu^T)) Wd^T by up to {(got - want).abs().max():.2e}; "
               "weights are (out, in) like nn.Linear: use x @ W.T or F.linear(x, W)")
