"""Checkers of notebook 01: each passes the reference answer, fails plausible wrong answers, and reports stubs."""

import math

import pytest
import torch
from _exercise_cases import checker_tests, stub  # noqa: F401

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


SCORES_MUTANTS = {
    "no sqrt(d_k)": lambda q, k: q @ k.transpose(-2, -1),
    "divide by d_k": lambda q, k: q @ k.transpose(-2, -1) / q.size(-1),
    "k @ q^T (transposed scores)": lambda q, k: k @ q.transpose(-2, -1) / math.sqrt(q.size(-1)),
    "k.T on a batched tensor": lambda q, k: q @ k.T / math.sqrt(q.size(-1)),
}


# ---- 01.2 softmax
def softmax_ref(x):
    e = torch.exp(x - x.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


SOFTMAX_MUTANTS = {
    "over dim 0": lambda x: torch.softmax(x, dim=0),
    "no max subtraction": lambda x: torch.exp(x) / torch.exp(x).sum(-1, keepdim=True),
    "not normalised": lambda x: torch.exp(x - x.max(-1, keepdim=True).values),
    "over dim -2": lambda x: torch.softmax(x, dim=-2),
}


# ---- 01.3 causal mask
def mask_ref(T):
    return torch.tril(torch.ones(T, T, dtype=torch.bool))


MASK_MUTANTS = {
    "triu": lambda T: torch.triu(torch.ones(T, T, dtype=torch.bool)),
    "no diagonal": lambda T: torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=-1),
    "float mask": lambda T: torch.tril(torch.ones(T, T)),
    "all ones": lambda T: torch.ones(T, T, dtype=torch.bool),
}


# ---- 01.4 attention
def attention_ref(q, k, v, mask=None):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    w = torch.softmax(s, dim=-1)
    return w @ v, w


def _att(dim=-1, scale=True, invert=False, after=False, out_t=False):
    def f(q, k, v, mask=None):
        s = q @ k.transpose(-2, -1)
        if scale:
            s = s / math.sqrt(q.size(-1))
        if mask is not None and not after:
            s = s.masked_fill(mask if invert else ~mask, float("-inf"))
        w = torch.softmax(s, dim=dim)
        if mask is not None and after:
            w = w * mask
        return (v.transpose(-2, -1) @ w.transpose(-2, -1)).transpose(-2, -1) if out_t else w @ v, w

    return f


ATTENTION_MUTANTS = {
    "softmax over queries (dim -2)": _att(dim=-2),
    "no sqrt(d_k)": _att(scale=False),
    "inverted mask": _att(invert=True),
    "mask applied after softmax": _att(after=True),
    "weights only": lambda q, k, v, mask=None: attention_ref(q, k, v, mask)[1],
}


# ---- 01.5 cross-attention
def cross_ref(x, context, w_q, w_k, w_v):
    return attention_ref(x @ w_q, context @ w_k, context @ w_v)[0]


CROSS_MUTANTS = {
    "self-attention": lambda x, c, wq, wk, wv: attention_ref(x @ wq, x @ wk, x @ wv)[0],
    "values from x": lambda x, c, wq, wk, wv: attention_ref(x @ wq, c @ wk, x @ wv)[0],
    "no sqrt(d_k)": lambda x, c, wq, wk, wv: torch.softmax((x @ wq) @ (c @ wk).mT, -1) @ (c @ wv),
    "queries from context": lambda x, c, wq, wk, wv: attention_ref(c @ wq, c @ wk, c @ wv)[0],
    "w_k and w_v swapped": lambda x, c, wq, wk, wv: attention_ref(x @ wq, c @ wv, c @ wk)[0],
}

CASES = [
    (check_attention_scores, scores_ref, SCORES_MUTANTS),
    (check_softmax, softmax_ref, SOFTMAX_MUTANTS),
    (check_causal_mask, mask_ref, MASK_MUTANTS),
    (check_attention, attention_ref, ATTENTION_MUTANTS),
    (check_cross_attention, cross_ref, CROSS_MUTANTS),
]


test_reference_passes, test_mutant_fails, test_stub_not_done = checker_tests(CASES)


def test_messages_speak_in_teaching_terms():
    with pytest.raises(ExerciseFailed, match="see the future"):
        check_causal_mask(MASK_MUTANTS["triu"])
    with pytest.raises(ExerciseFailed, match="rows do not sum to 1"):
        check_softmax(SOFTMAX_MUTANTS["over dim 0"])
    with pytest.raises(ExerciseFailed, match="sqrt"):
        check_attention_scores(SCORES_MUTANTS["no sqrt(d_k)"])
    with pytest.raises(ExerciseFailed, match="inverted"):
        check_attention(ATTENTION_MUTANTS["inverted mask"])
    with pytest.raises(ExerciseFailed, match="self-attention"):
        check_cross_attention(CROSS_MUTANTS["self-attention"])
