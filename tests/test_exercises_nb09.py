"""Checkers of notebook 09: each passes the reference answer, fails plausible wrong answers with a message
naming the mistake, and reports stubs as not done."""

import torch
from _exercise_cases import checker_tests, stub  # noqa: F401

from minigpt.exercises.nb09 import (
    check_induction_score,
    check_previous_token_score,
    check_rollout,
    check_row_entropy,
)


# ---- 09.1 row entropy
def entropy_ref(A):
    return -(A * A.clamp_min(1e-12).log()).sum(-1)


ENTROPY_MUTANTS = {
    "0 log 0 = NaN": (lambda A: -(A * A.log()).sum(-1), r"NaN"),
    "log base 2": (lambda A: -(A * A.clamp_min(1e-12).log2()).sum(-1), r"bits"),
    "log base 10": (lambda A: -(A * A.clamp_min(1e-12).log10()).sum(-1), r"base 10"),
    "missing minus": (lambda A: (A * A.clamp_min(1e-12).log()).sum(-1), r"minus sign"),
    "sum over queries": (lambda A: -(A * A.clamp_min(1e-12).log()).sum(-2), r"over the queries"),
    "mean instead of sum": (lambda A: -(A * A.clamp_min(1e-12).log()).mean(-1), r"mean over the keys"),
    "not weighted by p": (lambda A: -(A.clamp_min(1e-12).log()).sum(-1), r"without weighting"),
    "normalised by ln(i+1)": (
        lambda A: -(A * A.clamp_min(1e-12).log()).sum(-1) / torch.arange(1, A.shape[-1] + 1).float().log(),
        r"NORMALISED entropy"),
    "sums over everything": (lambda A: -(A * A.clamp_min(1e-12).log()).sum((-2, -1)), r"one entropy per query row"),
}


# ---- 09.2 previous-token score
def prev_ref(A):
    return torch.diagonal(A, offset=-1).mean()


PREV_MUTANTS = {
    "divides by T": (lambda A: torch.diagonal(A, offset=-1).sum() / A.shape[-1], r"T-1"),
    "future diagonal": (lambda A: torch.diagonal(A, offset=1).mean(), r"A\[i, i\+1\]"),
    "main diagonal": (lambda A: torch.diagonal(A)[1:].mean(), r"diagonal A\[i, i\]"),
    "whole column 0": (lambda A: A[1:, 0].mean(), r"first column"),
    "two back (offset -2)": (lambda A: torch.diagonal(A, offset=-2).mean(), r"two tokens back"),
    "sum, not mean": (lambda A: torch.diagonal(A, offset=-1).sum(), r"summed"),
    "max, not mean": (lambda A: torch.diagonal(A, offset=-1).max(), r"largest"),
    "wrap-around index i-1 for i = 0": (lambda A: A[torch.arange(len(A)), torch.arange(len(A)) - 1].mean(), r"T-1"),
    "skips query 1": (lambda A: torch.diagonal(A, offset=-1)[1:].mean(), r"left out query 1"),
}


# ---- 09.3 induction score
def induction_ref(A, P):
    return torch.stack([A[i, i - P + 1] for i in range(P, 2 * P)]).mean()


def _ind(A, P, dq=0, dk=0):
    q = torch.arange(P, 2 * P) + dq
    return A[q, q - P + 1 + dk].mean()


INDUCTION_MUTANTS = {
    "duplicate-token key i-P": (lambda A, P: _ind(A, P, dk=-1), r"PREVIOUS COPY"),
    "over all queries": (lambda A, P: torch.stack([A[i, max(i - P + 1, 0)] for i in range(2 * P)]).mean(),
                         r"P queries"),
    "two steps on": (lambda A, P: _ind(A, P, dk=1), r"one step too far"),
    "previous token": (lambda A, P: torch.stack([A[i, i - 1] for i in range(P, 2 * P)]).mean(), r"previous-token"),
    "queries off by one": (lambda A, P: _ind(A, P, dq=-1), r"off by one"),
    "key i-P-1": (lambda A, P: _ind(A, P, dk=-2), r"PREVIOUS COPY|BEFORE the earlier copy"),
    "sum, not mean": (lambda A, P: _ind(A, P) * P, r"summed"),
    "divides by 2P": (lambda A, P: _ind(A, P) / 2, r"2P"),
}


# ---- 09.4 rollout
def rollout_ref(maps):
    T = maps.shape[-1]
    r = torch.eye(T)
    for layer in maps:
        a = layer.mean(0) + torch.eye(T)
        r = (a / a.sum(-1, keepdim=True)) @ r
    return r


def _rollout_variant(maps, *, residual=True, normalise=True, left=True, fuse="mean", norm_dim=-1,
                     elementwise=False, residual_after=False):
    T = maps.shape[-1]
    r = torch.eye(T)
    for layer in maps:
        a = {"mean": layer.mean(0), "sum": layer.sum(0), "max": layer.max(0).values}[fuse]
        if residual and not residual_after:
            a = a + torch.eye(T)
        if normalise:
            a = a / a.sum(norm_dim, keepdim=True)
        if residual_after:
            a = a + torch.eye(T)
        r = a * r if elementwise else a @ r if left else r @ a
    return r


ROLLOUT_MUTANTS = {
    "no residual": (lambda m: _rollout_variant(m, residual=False), r"identity"),
    "not renormalised": (lambda m: _rollout_variant(m, normalise=False), r"row sums"),
    "wrong order": (lambda m: _rollout_variant(m, left=False), r"wrong order"),
    "max over heads": (lambda m: _rollout_variant(m, fuse="max"), r"max over the heads"),
    "last layer only": (lambda m: _rollout_variant(m[-1:]), r"only the last layer"),
    "sum over heads": (lambda m: _rollout_variant(m, fuse="sum"), r"summed the heads"),
    "columns normalised": (lambda m: _rollout_variant(m, norm_dim=-2), r"COLUMNS"),
    "elementwise product": (lambda m: _rollout_variant(m, elementwise=True), r"elementwise"),
    "per-head rollout, averaged": (
        lambda m: torch.stack([_rollout_variant(m[:, h : h + 1]) for h in range(m.shape[1])]).mean(0),
        r"each head separately"),
    "identity added after normalising": (lambda m: _rollout_variant(m, residual_after=True), r"row sums"),
}

CASES = [
    (check_row_entropy, entropy_ref, ENTROPY_MUTANTS),
    (check_previous_token_score, prev_ref, PREV_MUTANTS),
    (check_induction_score, induction_ref, INDUCTION_MUTANTS),
    (check_rollout, rollout_ref, ROLLOUT_MUTANTS),
]


test_reference_passes, test_mutant_fails, test_stub_not_done = checker_tests(CASES)


def test_library_agrees_with_the_checkers():
    """minigpt.tools.analysis implements the same definitions the exercises teach."""
    from minigpt.tools import analysis

    assert check_rollout(lambda m: analysis.attention_rollout(m)).passed
    assert check_previous_token_score(lambda A: analysis.previous_token_score(A)).passed
