"""Checkers for notebook 01 (the attention mechanism).

Every reference below is written independently of :mod:`minigpt.attention` (einsum, ``torch.softmax``,
``torch.tril``, ``F.scaled_dot_product_attention``), so a bug in the library cannot hide a bug in an answer.
Each checker first computes what the common mistakes would produce and names the one that matches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._core import ExerciseFailed, checker, expect, forbid

__all__ = [
    "check_attention_scores",
    "check_softmax",
    "check_causal_mask",
    "check_attention",
    "check_cross_attention",
]

_SOFTMAX_BANNED = {
    name: "the task asks you to write softmax yourself (torch.exp, a max and a sum)"
    for name in ("torch.softmax", "torch.nn.functional.softmax", "torch.Tensor.softmax", "torch.special.softmax",
                 "torch.nn.functional.log_softmax", "torch.log_softmax", "torch.Tensor.log_softmax")
}
_LIBRARY_ATTENTION = {
    "torch.nn.functional.scaled_dot_product_attention": "the exercise is to write attention from memory; "
    "F.scaled_dot_product_attention is what the checker compares you with",
}


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return isinstance(a, torch.Tensor) and a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=tol,
                                                                                 rtol=tol)


def _tensor(x, what: str) -> torch.Tensor:
    expect(isinstance(x, torch.Tensor), f"{what} should be a torch.Tensor, got {type(x).__name__}")
    return x


def _unchanged(given: torch.Tensor, original: torch.Tensor, name: str) -> None:
    expect(torch.equal(given, original), f"your function changed its input {name} in place (an in-place op such as "
           "-=, masked_fill_ or x.sub_): the caller's tensor is corrupted. Compute a new tensor instead")


def _ref_scores(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    scale = math.sqrt(q.size(-1)) if scale is None else scale
    return torch.einsum("...td,...sd->...ts", q, k) / scale


@checker("01.1 attention scores")
def check_attention_scores(fn) -> None:
    """fn(q (..., T, d), k (..., S, d)) -> scaled scores (..., T, S)."""
    g = torch.Generator().manual_seed(1)
    # no two of T, S, d equal, so a scale by the wrong size or a transposed result is visible
    for shape_q, shape_k in [((3, 8), (5, 8)), ((2, 4, 3, 16), (2, 4, 6, 16)), ((1, 4, 9), (1, 7, 9))]:
        q, k = torch.randn(shape_q, generator=g), torch.randn(shape_k, generator=g)
        q_in, k_in = q.clone(), k.clone()
        try:
            got = _tensor(fn(q_in, k_in), "the scores")
        except RuntimeError as e:
            if q.dim() <= 2:
                raise
            raise ExerciseFailed(f"for batched q {tuple(q.shape)} and k {tuple(k.shape)} your code fails ({e}). k.T "
                                 "reverses ALL dimensions of a batched tensor; transpose only the last two: "
                                 "k.transpose(-2, -1)") from None
        _unchanged(q_in, q, "q")
        _unchanged(k_in, k, "k")
        want = _ref_scores(q, k)
        T, S, d = q.size(-2), k.size(-2), q.size(-1)
        expect(
            got.shape != want.shape[:-2] + (S, T),
            f"your scores have shape {tuple(got.shape)}, i.e. (..., S, T): you computed k @ q^T. One row per "
            f"QUERY: q @ k.transpose(-2, -1) gives (..., T={T}, S={S})",
        )
        expect(
            got.shape == want.shape,
            f"for q of shape {tuple(q.shape)} and k of shape {tuple(k.shape)} the scores should have shape "
            f"{tuple(want.shape)} (one score per query i and key j, T={T} rows, S={S} columns), got "
            f"{tuple(got.shape)}. Multiply q by k transposed on its LAST two dims: k.transpose(-2, -1).",
        )
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
            not _close(got, want * math.sqrt(d) / math.sqrt(T)) and not _close(got, want * math.sqrt(d) / math.sqrt(S)),
            f"you divided by the square root of a sequence length (T={T} or S={S}); d_k is the size of one "
            f"query/key vector, the LAST dimension: sqrt({d})",
        )
        expect(
            _close(got, want),
            "the scores do not match q @ k^T / sqrt(d_k): score[i, j] should be the dot product of query i "
            "with key j, divided by sqrt(d_k).",
        )


@checker("01.2 softmax")
def check_softmax(fn) -> None:
    """fn(scores (..., S)) -> softmax over the last dim, numerically stable, without torch's softmax."""

    def call(x: torch.Tensor) -> torch.Tensor:
        given = x.clone()
        with forbid(_SOFTMAX_BANNED):
            out = fn(given)
        _unchanged(given, x, "x")
        return _tensor(out, "softmax(scores)")

    def basics(got: torch.Tensor, x: torch.Tensor) -> None:
        expect(got.shape == x.shape, f"softmax keeps the shape: expected {tuple(x.shape)}, got {tuple(got.shape)}")
        expect(bool((got >= 0).all()), "some weights are negative: softmax exponentiates, so every weight is >= 0")
        row_sums = got.sum(-1)
        expect(
            _close(row_sums, torch.ones_like(row_sums)),
            f"for an input of shape {tuple(x.shape)} the rows do not sum to 1 (row sums "
            f"{[round(v, 3) for v in row_sums.flatten()[:4].tolist()]}...): normalise over the LAST dimension "
            "(the keys), dim=-1 with keepdim=True, not over queries or batch.",
        )

    g = torch.Generator().manual_seed(2)
    square = torch.randn(4, 4, generator=g) * 3  # (4, 4): a max without keepdim broadcasts silently here
    got = call(square)
    basics(got, square)
    wrong_shift = torch.exp(square - square.max(-1).values) / torch.exp(square - square.max(-1).values).sum(
        -1, keepdim=True)
    expect(
        not _close(got, wrong_shift),
        "on a square (4, 4) input you subtract the row maxima along the wrong axis: x.max(-1).values has shape (4,) "
        "and broadcasts as a ROW, so column j is shifted by row j's max. Keep the dimension: "
        "x.max(dim=-1, keepdim=True).values",
    )
    expect(_close(got, torch.softmax(square, -1)), "on a square (4, 4) input the values differ from softmax over "
           "the last dim: use keepdim=True for the max and the sum so they broadcast along each row")

    x = torch.randn(2, 3, 5, generator=g) * 3
    got = call(x)
    want = torch.softmax(x, dim=-1)
    basics(got, x)
    expect(_close(got, want), "the values differ from exp(x) / sum(exp(x)) along the last dim")

    big = torch.tensor([[1000.0, 1001.0, 999.0], [-5.0, 0.0, 5.0]])
    got = call(big)
    expect(
        not (bool(torch.isfinite(got[0]).all()) and not bool(torch.isfinite(got[1]).all())),
        "the row [-5, 0, 5] gives NaN when another row holds scores near 1000: you subtracted the GLOBAL maximum "
        "(x.max()), so exp(-1006) underflows to 0 and you divide 0 by 0. Subtract each row's own maximum: "
        "x.max(dim=-1, keepdim=True).values",
    )
    expect(
        bool(torch.isfinite(got).all()),
        "scores around 1000 give NaN or inf: exp(1000) overflows float32. Subtract the row maximum first "
        "(x - x.max(-1, keepdim=True).values); softmax does not change when you shift a row by a constant.",
    )
    expect(_close(got, torch.softmax(big, dim=-1)), "large scores give the wrong weights; subtract the row max")
    masked = torch.tensor([[0.5, float("-inf"), 1.5, float("-inf")], [float("-inf"), 2.0, -1.0, 0.0]])
    got = call(masked)
    expect(
        bool(torch.isfinite(got).all()) and bool((got[masked == float("-inf")] == 0).all()),
        "a score of -inf (a masked key) must get weight exactly 0 (and no NaN): exp(-inf - max) = 0 as long as "
        "the row maximum is finite",
    )
    expect(_close(got, torch.softmax(masked, -1)), "rows with -inf scores get the wrong weights on the other keys")
    one_d = torch.tensor([0.1, 2.0, -1.0])
    expect(_close(call(one_d), torch.softmax(one_d, -1)), "a 1-D input (one row of scores) should work too: use "
           "dim=-1 everywhere, not dim=1")


def _ref_causal(T: int) -> torch.Tensor:
    return torch.ones(T, T).tril().bool()


@checker("01.3 causal mask")
def check_causal_mask(fn) -> None:
    """fn(T) -> (T, T) bool, True where query i may attend to key j (j <= i)."""
    for T in (4, 7, 1):  # T = 1 last: there every mistake but "no diagonal" looks right
        m = _tensor(fn(T), "the mask")
        expect(m.shape == (T, T), f"for T={T} the mask should be ({T}, {T}), got {tuple(m.shape)}")
        expect(
            m.dtype == torch.bool,
            f"the mask should be boolean (True = may attend), got dtype {m.dtype}; "
            "build it with dtype=torch.bool or call .bool()",
        )
        want = _ref_causal(T)
        if torch.equal(m, want):
            continue
        expect(T == 1 or not torch.equal(m, ~want),
               "your mask is inverted: True marks the FUTURE keys (torch.nn.MultiheadAttention's 'True = blocked' "
               "convention). Here True means 'may attend': the lower triangle including the diagonal")
        expect(T == 1 or not torch.equal(m, want.T),
               "your mask is the upper triangle (torch.triu): query i would attend to the keys after it and not "
               "to the ones before. Keep the lower triangle: torch.tril")
        expect(T == 1 or not torch.equal(m, torch.ones(T, T).tril(1).bool()),
               "off by one: with tril(diagonal=1) query i also sees key i + 1, one token of the future. Use "
               "the default diagonal=0")
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
                        "(token i may read tokens 0..i): tril with diagonal=0, not -1",
                    )
                else:
                    expect(bool(m[i, j]), f"query {i} cannot see the earlier key {j}; every past token is allowed")


def _ref_attention(q, k, v, mask=None, fill=float("-inf"), scale=None, after=False, dim=-1):
    scores = _ref_scores(q, k, scale)
    if mask is not None and not after:
        scores = scores.masked_fill(~mask, fill)
    w = torch.softmax(scores, dim=dim)
    if mask is not None and after:
        w = w * mask
    return w @ v, w


def _library_names(fn) -> set[str]:
    names = set(getattr(getattr(fn, "__code__", None), "co_names", ()))
    return names & {"scaled_dot_product_attention", "fast_attention", "MultiheadAttention", "MultiHeadAttention"}


@checker("01.4 attention from memory")
def check_attention(fn) -> None:
    """fn(q, k, v, mask=None) -> (out (..., T, hs), weights (..., T, S)); bool mask, True = may attend."""
    used = _library_names(fn)
    expect(not used, f"your function calls {sorted(used)}: the exercise is to write attention from memory "
           "(scores, mask, softmax, weighted sum), not to call a library version")
    g = torch.Generator().manual_seed(4)
    B, nh, T, S, hs = 2, 2, 4, 6, 8  # T, S and hs all differ

    def call(q, k, v, mask=None):
        args = [q.clone(), k.clone(), v.clone()]
        with forbid(_LIBRARY_ATTENTION):
            res = fn(*args) if mask is None else fn(*args, mask=mask.clone())
        for given, orig, name in zip(args, (q, k, v), "qkv"):
            _unchanged(given, orig, name)
        expect(isinstance(res, tuple) and len(res) == 2, "return a pair (output, weights) so the weights can be "
               "plotted")
        out, w = (_tensor(r, n) for r, n in zip(res, ("output", "weights")))
        expect(not (out.shape[-1] == k.size(-2) and w.shape[-1] == v.size(-1) and out.shape != w.shape),
               f"you returned (weights, output): the output (..., T, hs={hs}) comes first, then the weights "
               f"(..., T, S={S})")
        return out, w

    q = torch.randn(B, nh, T, hs, generator=g)
    k = torch.randn(B, nh, S, hs, generator=g)
    v = torch.randn(B, nh, S, hs, generator=g)
    _check_attention_unmasked(call, q, k, v)
    _check_attention_causal(call, g)
    _check_attention_padding(call, q, k, v)


def _check_attention_unmasked(call, q, k, v) -> None:
    """No mask: shapes, rows summing to 1, the sqrt(d_k) scale, the output, and SDPA."""
    T, S, hs = q.size(-2), k.size(-2), q.size(-1)
    out, w = call(q, k, v)
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
        not _close(w, _ref_attention(q, k, v, scale=1.0)[1]),
        f"the weights are softmax(q k^T) without the 1/sqrt(d_k) scale (d_k = {hs}); large head sizes "
        "would saturate the softmax",
    )
    for n, what in ((T, "T, the number of queries"), (S, "S, the number of keys"), (hs * hs, "d_k itself")):
        expect(not _close(w, _ref_attention(q, k, v, scale=math.sqrt(n))[1]),
               f"you scaled by sqrt({n}) = sqrt of {what}; the scale is sqrt(d_k) = sqrt({hs}), the size of one "
               "query/key vector: q.size(-1)")
    expect(_close(w, want_w), "the weights differ from softmax(q k^T / sqrt(d_k)) over the keys")
    expect(out.shape == want_out.shape, f"output should be (B, nh, T, hs) = {tuple(want_out.shape)}, got "
           f"{tuple(out.shape)}")
    expect(_close(out, want_out), "the weights are right but the output is not weights @ v")
    expect(
        _close(out, F.scaled_dot_product_attention(q, k, v)),
        "the output differs from torch.nn.functional.scaled_dot_product_attention",
    )


def _check_attention_causal(call, g: torch.Generator) -> None:
    """A causal mask (T == S): 0-filled, ignored, inverted or after-the-softmax masks are named."""
    B, nh, hs = 2, 2, 8
    T2 = 5
    q2, k2, v2 = (torch.randn(B, nh, T2, hs, generator=g) for _ in range(3))
    causal = torch.ones(T2, T2).tril().bool()
    out, w = call(q2, k2, v2, mask=causal)
    want_out, want_w = _ref_attention(q2, k2, v2, causal)
    expect(not _close(w, _ref_attention(q2, k2, v2, causal, fill=0.0)[1]),
           "you filled the masked scores with 0: a score of 0 still gets weight e^0 > 0 after the softmax, so "
           "queries still see future keys. Fill with float('-inf') (or a very negative number)")
    expect(not _close(w, _ref_attention(q2, k2, v2)[1]),
           "the causal mask was ignored: with mask given, fill the scores where the mask is False with -inf "
           "before the softmax")
    inverted = causal.logical_not()
    inv_w = _ref_attention(q2, k2, v2, inverted)[1]  # the last query has no key left: NaN, so compare the others
    expect(not _close(w[..., :-1, :], inv_w[..., :-1, :], 1e-4),
           "your mask is inverted: you blocked the keys where the mask is True. True = may attend, so fill "
           "scores.masked_fill(~mask, -inf)")
    future = w.masked_select(~causal.expand_as(w))
    expect(
        bool((future.abs() < 1e-6).all()),
        "with a causal mask some query still puts weight on a future key: the mask was ignored or inverted "
        "(True = may attend, so fill the scores where the mask is False with -inf before the softmax)",
    )
    sums = w.sum(-1)
    expect(
        _close(sums, torch.ones_like(sums)),
        "with a mask the rows no longer sum to 1: you zeroed the weights AFTER the softmax. Mask the scores "
        "BEFORE the softmax (-inf), so each row renormalises over the allowed keys",
    )
    expect(_close(w, want_w) and _close(out, want_out), "with a causal mask the weights or output are wrong")


def _check_attention_padding(call, q, k, v) -> None:
    """A key-padding mask (B, 1, 1, S) must broadcast over heads and queries."""
    S = k.size(-2)
    lengths = torch.tensor([6, 3])
    pad = (torch.arange(S)[None, :] < lengths[:, None])[:, None, None, :]
    out, w = call(q, k, v, mask=pad)
    want_out, want_w = _ref_attention(q, k, v, pad)
    expect(
        _close(w, want_w) and _close(out, want_out),
        "a padding mask of shape (B, 1, 1, S) must broadcast over heads and queries: padded keys get weight 0",
    )
    expect(
        _close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=pad)),
        "with a padding mask the output differs from F.scaled_dot_product_attention",
    )


def _cross(x, ctx, w_q, w_k, w_v, q_src=None, k_src=None, v_src=None, scale=None, dim=-1):
    qs, ks, vs = (x if q_src is None else q_src), (ctx if k_src is None else k_src), (ctx if v_src is None else v_src)
    q, k, v = qs @ w_q, ks @ w_k, vs @ w_v
    s = _ref_scores(q, k, scale)
    return torch.softmax(s, dim=dim) @ v


@checker("01.5 cross-attention")
def check_cross_attention(fn) -> None:
    """fn(x (B, T, C), context (B, S, C), w_q, w_k, w_v (C, hs)) -> (B, T, hs)."""
    g = torch.Generator().manual_seed(5)
    C, hs = 12, 4  # C != hs, so a scale by sqrt(C) and a transposed weight are both visible
    # first T == S (every mix-up of x and context still has the right shape and can be named), then T != S
    for B, T, S in [(2, 5, 5), (2, 3, 6)]:
        x = torch.randn(B, T, C, generator=g)
        ctx = torch.randn(B, S, C, generator=g)
        w_q, w_k, w_v = (torch.randn(C, hs, generator=g) / math.sqrt(C) * 3 for _ in range(3))
        args = [x.clone(), ctx.clone(), w_q.clone(), w_k.clone(), w_v.clone()]
        try:
            out = _tensor(fn(*args), "the output")
        except RuntimeError as e:
            if "shapes cannot be multiplied" not in str(e):
                raise
            raise ExerciseFailed(f"a matrix product failed ({e}): x and context are (B, T, C) with C={C}, and w_q, "
                                 f"w_k, w_v are (C, hs) = ({C}, {hs}), so project with x @ w_q (no .T)") from None
        for given, orig, name in zip(args, (x, ctx, w_q, w_k, w_v), ("x", "context", "w_q", "w_k", "w_v")):
            _unchanged(given, orig, name)
        want = _cross(x, ctx, w_q, w_k, w_v)
        if T != S:
            expect(
                out.shape == want.shape,
                f"the output should be (B, T, hs) = {tuple(want.shape)}: one row per QUERY position of x, got "
                f"{tuple(out.shape)}. Queries come from x, keys and values from the context.",
            )
        else:
            expect(out.shape == want.shape, f"the output should be (B, T, hs) = {tuple(want.shape)}, got "
                   f"{tuple(out.shape)}")
        if _close(out, want):
            continue
        mistakes = [
            (dict(k_src=x, v_src=x), "this is self-attention: keys and values must come from the context"),
            (dict(q_src=ctx), "your queries come from the context: the queries are x @ w_q (the decoder side "
             "asks), keys and values are projections of the context"),
            (dict(v_src=x), "your values come from x: keys AND values are projections of the context "
             "(context @ w_v)"),
            (dict(k_src=x), "your keys come from x: keys AND values are projections of the context "
             "(context @ w_k)"),
            (dict(scale=1.0), f"divide the scores by sqrt(d_k) = sqrt({hs}), the size of the projected keys"),
            (dict(scale=math.sqrt(C)), f"you divided by sqrt(C) = sqrt({C}) = sqrt(n_embd); the scale is "
             f"sqrt(head size) = sqrt({hs}), the size of the projected queries and keys (k.size(-1) after the "
             "projection, not x.size(-1))"),
            (dict(dim=-2), "softmax over the wrong dimension: each query's weights are normalised over the KEYS "
             "(the context positions), dim=-1"),
        ]
        for kwargs, message in mistakes:
            expect(not _close(out, _cross(x, ctx, w_q, w_k, w_v, **kwargs)), message)
        swapped = _cross(x, ctx, w_q, w_v, w_k)
        expect(not _close(out, swapped), "w_k and w_v are swapped: keys are context @ w_k, values context @ w_v")
        expect(
            _close(out, want),
            "the output differs from softmax((x W_q)(context W_k)^T / sqrt(d_k)) (context W_v); check which input "
            "each projection is applied to",
        )
