"""Checkers for notebook 01 (the attention mechanism).

Every reference below is written independently of :mod:`minigpt.attention` (einsum, ``torch.softmax``,
``torch.tril``, ``F.scaled_dot_product_attention``), so a bug in the library cannot hide a bug in an answer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._core import checker, expect

__all__ = [
    "check_attention_scores",
    "check_softmax",
    "check_causal_mask",
    "check_attention",
    "check_cross_attention",
]


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=tol, rtol=tol)


def _tensor(x, what: str) -> torch.Tensor:
    expect(isinstance(x, torch.Tensor), f"{what} should be a torch.Tensor, got {type(x).__name__}")
    return x


def _ref_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return torch.einsum("...td,...sd->...ts", q, k) / math.sqrt(q.size(-1))


@checker("01.1 attention scores")
def check_attention_scores(fn) -> None:
    """fn(q (..., T, d), k (..., S, d)) -> scaled scores (..., T, S)."""
    g = torch.Generator().manual_seed(1)
    for shape_q, shape_k in [((3, 8), (5, 8)), ((2, 4, 3, 16), (2, 4, 6, 16))]:
        q, k = torch.randn(shape_q, generator=g), torch.randn(shape_k, generator=g)
        got = _tensor(fn(q.clone(), k.clone()), "the scores")
        want = _ref_scores(q, k)
        T, S = q.size(-2), k.size(-2)
        expect(
            got.shape == want.shape,
            f"for q of shape {tuple(q.shape)} and k of shape {tuple(k.shape)} the scores should have shape "
            f"{tuple(want.shape)} (one score per query i and key j, T={T} rows, S={S} columns), got "
            f"{tuple(got.shape)}. Multiply q by k transposed on its LAST two dims: k.transpose(-2, -1).",
        )
        d = q.size(-1)
        expect(
            not _close(got, want * math.sqrt(d)),
            f"your scores are q @ k^T without scaling: divide by sqrt(d_k) = sqrt({d}) so their variance stays "
            "near 1 whatever the head size.",
        )
        expect(
            not _close(got, want / math.sqrt(d)),
            f"you divided by d_k = {d}; the scale is 1 / sqrt(d_k) = 1 / {math.sqrt(d):.3g}.",
        )
        expect(
            _close(got, want),
            "the scores do not match q @ k^T / sqrt(d_k): score[i, j] should be the dot product of query i "
            "with key j, divided by sqrt(d_k).",
        )


@checker("01.2 softmax")
def check_softmax(fn) -> None:
    """fn(scores (..., S)) -> softmax over the last dim, numerically stable."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 5, generator=g) * 3
    got = _tensor(fn(x.clone()), "softmax(scores)")
    expect(got.shape == x.shape, f"softmax keeps the shape: expected {tuple(x.shape)}, got {tuple(got.shape)}")
    expect(bool((got >= 0).all()), "some weights are negative: softmax exponentiates, so every weight is >= 0")
    row_sums = got.sum(-1)
    expect(
        _close(row_sums, torch.ones_like(row_sums)),
        "rows do not sum to 1 (row sums "
        f"{[round(v, 3) for v in row_sums.flatten()[:4].tolist()]}...): normalise over the LAST dimension "
        "(the keys), dim=-1, not over queries or batch.",
    )
    expect(_close(got, torch.softmax(x, dim=-1)), "the values differ from exp(x) / sum(exp(x)) along the last dim")
    big = torch.tensor([[1000.0, 1001.0, 999.0], [-5.0, 0.0, 5.0]])
    got = fn(big.clone())
    expect(
        bool(torch.isfinite(got).all()),
        "scores around 1000 give NaN or inf: exp(1000) overflows float32. Subtract the row maximum first "
        "(x - x.max(-1, keepdim=True).values); softmax does not change when you shift a row by a constant.",
    )
    expect(_close(got, torch.softmax(big, dim=-1)), "large scores give the wrong weights; subtract the row max")
    masked = torch.tensor([[0.5, float("-inf"), 1.5, float("-inf")]])
    got = fn(masked.clone())
    expect(
        bool(torch.isfinite(got).all()) and float(got[0, 1]) == 0.0 and float(got[0, 3]) == 0.0,
        "a score of -inf (a masked key) must get weight exactly 0",
    )


@checker("01.3 causal mask")
def check_causal_mask(fn) -> None:
    """fn(T) -> (T, T) bool, True where query i may attend to key j (j <= i)."""
    for T in (1, 4, 7):
        m = _tensor(fn(T), "the mask")
        expect(
            m.dtype == torch.bool,
            f"the mask should be boolean (True = may attend), got dtype {m.dtype}; "
            "build it with dtype=torch.bool or call .bool()",
        )
        expect(m.shape == (T, T), f"for T={T} the mask should be ({T}, {T}), got {tuple(m.shape)}")
        for i in range(T):
            for j in range(T):
                if j > i:
                    expect(
                        not bool(m[i, j]),
                        f"query {i} attends to key {j}: your mask lets the model see the future "
                        "(keep the lower triangle: torch.tril, not torch.triu)",
                    )
                elif j == i:
                    expect(
                        bool(m[i, j]),
                        f"query {i} may not attend to itself (key {j}); a causal mask keeps the diagonal "
                        "(token i may read tokens 0..i)",
                    )
                else:
                    expect(bool(m[i, j]), f"query {i} cannot see the earlier key {j}; every past token is allowed")


def _ref_attention(q, k, v, mask=None):
    scores = _ref_scores(q, k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    w = torch.softmax(scores, dim=-1)
    return w @ v, w


@checker("01.4 attention from memory")
def check_attention(fn) -> None:
    """fn(q, k, v, mask=None) -> (out (..., T, hs), weights (..., T, S)); bool mask, True = may attend."""
    g = torch.Generator().manual_seed(4)
    B, nh, T, S, hs = 2, 2, 4, 6, 8
    q = torch.randn(B, nh, T, hs, generator=g)
    k = torch.randn(B, nh, S, hs, generator=g)
    v = torch.randn(B, nh, S, hs, generator=g)
    res = fn(q.clone(), k.clone(), v.clone())
    expect(
        isinstance(res, tuple) and len(res) == 2,
        "return a pair (output, weights) so the weights can be plotted",
    )
    out, w = (_tensor(r, n) for r, n in zip(res, ("output", "weights")))
    want_out, want_w = _ref_attention(q, k, v)
    expect(
        w.shape == want_w.shape,
        f"weights should be (B, nh, T, S) = {tuple(want_w.shape)}: one row per query, one column per key; "
        f"got {tuple(w.shape)}",
    )
    sums = w.sum(-1)
    expect(
        _close(sums, torch.ones_like(sums)),
        "rows do not sum to 1: softmax over the wrong dimension (each query's weights over the keys, dim=-1)",
    )
    expect(
        not _close(w, torch.softmax(q @ k.transpose(-2, -1), dim=-1)),
        f"the weights are softmax(q k^T) without the 1/sqrt(d_k) scale (d_k = {hs}); large head sizes "
        "would saturate the softmax",
    )
    expect(_close(w, want_w), "the weights differ from softmax(q k^T / sqrt(d_k)) over the keys")
    expect(out.shape == want_out.shape, f"output should be (B, nh, T, hs) = {tuple(want_out.shape)}, got "
           f"{tuple(out.shape)}")
    expect(_close(out, want_out), "the weights are right but the output is not weights @ v")
    expect(
        _close(out, F.scaled_dot_product_attention(q, k, v)),
        "the output differs from torch.nn.functional.scaled_dot_product_attention",
    )

    # causal mask, T == S
    T2 = 5
    q2, k2, v2 = (torch.randn(B, nh, T2, hs, generator=g) for _ in range(3))
    causal = torch.ones(T2, T2).tril().bool()
    out, w = fn(q2.clone(), k2.clone(), v2.clone(), mask=causal)
    future = w.masked_select(~causal.expand_as(w))
    expect(
        bool((future.abs() < 1e-6).all()),
        "with a causal mask some query still puts weight on a future key: the mask was ignored or inverted "
        "(True = may attend, so fill the scores where the mask is False with -inf before the softmax)",
    )
    sums = w.sum(-1)
    expect(
        _close(sums, torch.ones_like(sums)),
        "with a mask the rows no longer sum to 1: mask the scores BEFORE the softmax, not the weights after it",
    )
    want_out, want_w = _ref_attention(q2, k2, v2, causal)
    expect(_close(w, want_w) and _close(out, want_out), "with a causal mask the weights or output are wrong")

    # key-padding mask broadcast over heads and queries: (B, 1, 1, S)
    lengths = torch.tensor([6, 3])
    pad = (torch.arange(S)[None, :] < lengths[:, None])[:, None, None, :]
    out, w = fn(q.clone(), k.clone(), v.clone(), mask=pad)
    want_out, want_w = _ref_attention(q, k, v, pad)
    expect(
        _close(w, want_w) and _close(out, want_out),
        "a padding mask of shape (B, 1, 1, S) must broadcast over heads and queries: padded keys get weight 0",
    )
    expect(
        _close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=pad)),
        "with a padding mask the output differs from F.scaled_dot_product_attention",
    )


@checker("01.5 cross-attention")
def check_cross_attention(fn) -> None:
    """fn(x (B, T, C), context (B, S, C), w_q, w_k, w_v (C, hs)) -> (B, T, hs)."""
    g = torch.Generator().manual_seed(5)
    B, T, S, C, hs = 2, 3, 5, 8, 4
    x = torch.randn(B, T, C, generator=g)
    ctx = torch.randn(B, S, C, generator=g)
    w_q, w_k, w_v = (torch.randn(C, hs, generator=g) / math.sqrt(C) for _ in range(3))
    out = _tensor(fn(x.clone(), ctx.clone(), w_q, w_k, w_v), "the output")
    want, _ = _ref_attention(x @ w_q, ctx @ w_k, ctx @ w_v)
    expect(
        out.shape == want.shape,
        f"the output should be (B, T, hs) = {tuple(want.shape)}: one row per QUERY position of x, got "
        f"{tuple(out.shape)}. Queries come from x, keys and values from the context.",
    )
    self_att, _ = _ref_attention(x @ w_q, x @ w_k, x @ w_v)
    expect(not _close(out, self_att), "this is self-attention: keys and values must come from the context")
    unscaled = torch.softmax((x @ w_q) @ (ctx @ w_k).transpose(-2, -1), -1) @ (ctx @ w_v)
    expect(not _close(out, unscaled), f"divide the scores by sqrt(d_k) = sqrt({hs}), the size of the projected keys")
    expect(
        _close(out, want),
        "the output differs from softmax((x W_q)(context W_k)^T / sqrt(d_k)) (context W_v); check which input "
        "each projection is applied to",
    )
