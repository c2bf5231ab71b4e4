"""Checkers of notebook 01: each passes the reference answer, fails plausible wrong answers, and reports stubs."""

import math

import pytest
import torch
import torch.nn.functional as F
from _exercise_cases import checker_tests, stub  # noqa: F401

from minigpt.attention import scaled_dot_product_attention
from minigpt.exercises import ExerciseFailed
from minigpt.exercises.nb01 import (
    check_attention,
    check_attention_scores,
    check_causal_mask,
    check_cross_attention,
    check_softmax,
)


# ---- 01.1 scores
def scores_ref(q, k):
    return q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))


def scores_in_place(q, k):
    q /= math.sqrt(q.size(-1))  # scales the caller's queries
    return q @ k.transpose(-2, -1)


SCORES_MUTANTS = {
    "no sqrt(d_k)": (lambda q, k: q @ k.transpose(-2, -1), r"without scaling"),
    "divide by d_k": (lambda q, k: q @ k.transpose(-2, -1) / q.size(-1), r"divided by d_k"),
    "k @ q^T (transposed scores)": (lambda q, k: k @ q.transpose(-2, -1) / math.sqrt(q.size(-1)), r"k @ q\^T"),
    "k.T on a batched tensor": (lambda q, k: q @ k.T / math.sqrt(q.size(-1)), r"transpose\(-2, -1\)"),
    "scale by sqrt(T)": (lambda q, k: q @ k.transpose(-2, -1) / math.sqrt(q.size(-2)), r"sequence length"),
    "scale by sqrt(S)": (lambda q, k: q @ k.transpose(-2, -1) / math.sqrt(k.size(-2)), r"sequence length"),
    "scales q in place": (scores_in_place, r"in place"),
}


# ---- 01.2 softmax
def softmax_ref(x):
    e = torch.exp(x - x.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def softmax_in_place(x):
    x -= x.max(-1, keepdim=True).values
    e = x.exp()
    return e / e.sum(-1, keepdim=True)


SOFTMAX_MUTANTS = {
    "over dim 0": (lambda x: softmax_ref(x.transpose(0, -1)).transpose(0, -1), r"do not sum to 1"),
    "no max subtraction": (lambda x: torch.exp(x) / torch.exp(x).sum(-1, keepdim=True), r"overflows"),
    "not normalised": (lambda x: torch.exp(x - x.max(-1, keepdim=True).values), r"do not sum to 1"),
    "torch.softmax": (lambda x: torch.softmax(x, dim=-1), r"torch.softmax.*write softmax yourself"),
    "F.softmax": (lambda x: F.softmax(x, dim=-1), r"functional.softmax.*write softmax yourself"),
    "Tensor.softmax": (lambda x: x.softmax(-1), r"Tensor.softmax.*write softmax yourself"),
    "nn.Softmax module": (lambda x: torch.nn.Softmax(dim=-1)(x), r"softmax.*write softmax yourself"),
    "exp of log_softmax": (lambda x: torch.log_softmax(x, -1).exp(), r"log_softmax"),
    "max without keepdim": (lambda x: torch.exp(x - x.max(-1).values)
                            / torch.exp(x - x.max(-1).values).sum(-1, keepdim=True), r"keepdim"),
    "sum without keepdim": (lambda x: torch.exp(x - x.max(-1, keepdim=True).values)
                            / torch.exp(x - x.max(-1, keepdim=True).values).sum(-1), r"keepdim"),
    "global max": (lambda x: torch.exp(x - x.max()) / torch.exp(x - x.max()).sum(-1, keepdim=True), r"GLOBAL"),
    "sums over dim 1": (lambda x: torch.exp(x - x.max(-1, keepdim=True).values)
                        / torch.exp(x - x.max(-1, keepdim=True).values).sum(1, keepdim=True), r"sum to 1|dim=-1"),
    "subtracts the max in place": (softmax_in_place, r"in place"),
}


# ---- 01.3 causal mask
def mask_ref(T):
    return torch.tril(torch.ones(T, T, dtype=torch.bool))


MASK_MUTANTS = {
    "triu": (lambda T: torch.triu(torch.ones(T, T, dtype=torch.bool)), r"upper triangle"),
    "no diagonal": (lambda T: torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=-1), r"itself"),
    "float mask": (lambda T: torch.tril(torch.ones(T, T)), r"boolean"),
    "all ones": (lambda T: torch.ones(T, T, dtype=torch.bool), r"see the future"),
    "inverted (True = blocked)": (lambda T: ~mask_ref(T), r"inverted"),
    "diagonal=1 (one step of future)": (lambda T: torch.ones(T, T).tril(1).bool(), r"off by one"),
    "batched (1, T, T)": (lambda T: mask_ref(T)[None], r"should be \(\d+, \d+\)"),
    "int mask": (lambda T: mask_ref(T).long(), r"boolean"),
}


# ---- 01.4 attention
def attention_ref(q, k, v, mask=None):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    w = torch.softmax(s, dim=-1)
    return w @ v, w


def _att(dim=-1, scale="hs", invert=False, after=False, fill=float("-inf"), swap=False):
    def f(q, k, v, mask=None):
        s = q @ k.transpose(-2, -1)
        n = {"hs": q.size(-1), "T": q.size(-2), "S": k.size(-2), None: 1}[scale]
        s = s / math.sqrt(n)
        if mask is not None and not after:
            s = s.masked_fill(mask if invert else ~mask, fill)
        w = torch.softmax(s, dim=dim)
        if mask is not None and after:
            w = w * mask
        return (w, w @ v) if swap else (w @ v, w)

    return f


def attention_lib(q, k, v, mask=None):
    return scaled_dot_product_attention(q, k, v, mask=mask)


def attention_fused(q, k, v, mask=None):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), torch.softmax(s, -1)


ATTENTION_MUTANTS = {
    "softmax over queries (dim -2)": (_att(dim=-2), r"sum to 1"),
    "no sqrt(d_k)": (_att(scale=None), r"without the 1/sqrt"),
    "inverted mask": (_att(invert=True), r"inverted"),
    "mask applied after softmax": (_att(after=True), r"AFTER the softmax"),
    "weights only": (lambda q, k, v, mask=None: attention_ref(q, k, v, mask)[1], r"pair"),
    "mask filled with 0": (_att(fill=0.0), r"filled the masked scores with 0"),
    "scale by sqrt(T)": (_att(scale="T"), r"sqrt of T"),
    "scale by sqrt(S)": (_att(scale="S"), r"sqrt of S"),
    "returns (weights, output)": (_att(swap=True), r"returned \(weights, output\)"),
    "calls minigpt's attention": (attention_lib, r"from memory"),
    "calls F.scaled_dot_product_attention": (attention_fused, r"from memory"),
    "mask ignored": (lambda q, k, v, mask=None: attention_ref(q, k, v), r"ignored"),
}


# ---- 01.5 cross-attention
def cross_ref(x, context, w_q, w_k, w_v):
    return attention_ref(x @ w_q, context @ w_k, context @ w_v)[0]


CROSS_MUTANTS = {
    "self-attention": (lambda x, c, wq, wk, wv: attention_ref(x @ wq, x @ wk, x @ wv)[0], r"self-attention"),
    "values from x": (lambda x, c, wq, wk, wv: attention_ref(x @ wq, c @ wk, x @ wv)[0], r"values come from x"),
    "keys from x": (lambda x, c, wq, wk, wv: attention_ref(x @ wq, x @ wk, c @ wv)[0], r"keys come from x"),
    "no sqrt(d_k)": (lambda x, c, wq, wk, wv: torch.softmax((x @ wq) @ (c @ wk).mT, -1) @ (c @ wv), r"sqrt\(d_k\)"),
    "queries from context": (lambda x, c, wq, wk, wv: attention_ref(c @ wq, c @ wk, c @ wv)[0],
                             r"queries come from the context"),
    "w_k and w_v swapped": (lambda x, c, wq, wk, wv: attention_ref(x @ wq, c @ wv, c @ wk)[0], r"swapped"),
    "scale by sqrt(C)": (lambda x, c, wq, wk, wv: torch.softmax((x @ wq) @ (c @ wk).mT / math.sqrt(x.size(-1)), -1)
                         @ (c @ wv), r"sqrt\(C\).*head size"),
    "softmax over queries": (lambda x, c, wq, wk, wv: torch.softmax((x @ wq) @ (c @ wk).mT / math.sqrt(wq.size(1)),
                                                                     -2) @ (c @ wv), r"wrong dimension"),
    "weights transposed (x @ w.T)": (lambda x, c, wq, wk, wv: attention_ref(x @ wq.T, c @ wk.T, c @ wv.T)[0],
                                     r"no \.T"),
}

CASES = [
    (check_attention_scores, scores_ref, SCORES_MUTANTS),
    (check_softmax, softmax_ref, SOFTMAX_MUTANTS),
    (check_causal_mask, mask_ref, MASK_MUTANTS),
    (check_attention, attention_ref, ATTENTION_MUTANTS),
    (check_cross_attention, cross_ref, CROSS_MUTANTS),
]


test_reference_passes, test_mutant_fails, test_stub_not_done = checker_tests(CASES)


def test_softmax_ban_is_lifted_after_the_check():
    with pytest.raises(ExerciseFailed):
        check_softmax(SOFTMAX_MUTANTS["torch.softmax"][0])
    x = torch.randn(3, 4)
    torch.testing.assert_close(torch.softmax(x, -1), F.softmax(x, -1))
    torch.testing.assert_close(x.softmax(-1), softmax_ref(x))
