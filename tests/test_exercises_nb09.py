"""Checkers of notebook 09: each passes the reference answer, fails plausible wrong answers, and reports stubs."""

import pytest
import torch
from _exercise_cases import checker_tests, stub  # noqa: F401

from minigpt.exercises import ExerciseFailed
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
    "0 log 0 = NaN": lambda A: -(A * A.log()).sum(-1),
    "log base 2": lambda A: -(A * A.clamp_min(1e-12).log2()).sum(-1),
    "missing minus": lambda A: (A * A.clamp_min(1e-12).log()).sum(-1),
    "sum over queries": lambda A: -(A * A.clamp_min(1e-12).log()).sum(-2),
    "mean instead of sum": lambda A: -(A * A.clamp_min(1e-12).log()).mean(-1),
}


# ---- 09.2 previous-token score
def prev_ref(A):
    return torch.diagonal(A, offset=-1).mean()


PREV_MUTANTS = {
    "divides by T": lambda A: torch.diagonal(A, offset=-1).sum() / A.shape[-1],
    "future diagonal": lambda A: torch.diagonal(A, offset=1).mean(),
    "main diagonal": lambda A: torch.diagonal(A)[1:].mean(),
    "whole column 0": lambda A: A[1:, 0].mean(),
}


# ---- 09.3 induction score
def induction_ref(A, P):
    return torch.stack([A[i, i - P + 1] for i in range(P, 2 * P)]).mean()


INDUCTION_MUTANTS = {
    "duplicate-token key i-P": lambda A, P: torch.stack([A[i, i - P] for i in range(P, 2 * P)]).mean(),
    "over all queries": lambda A, P: torch.stack([A[i, max(i - P + 1, 0)] for i in range(2 * P)]).mean(),
    "two steps on": lambda A, P: torch.stack([A[i, i - P + 2] for i in range(P, 2 * P)]).mean(),
    "previous token": lambda A, P: torch.stack([A[i, i - 1] for i in range(P, 2 * P)]).mean(),
}


# ---- 09.4 rollout
def rollout_ref(maps):
    T = maps.shape[-1]
    r = torch.eye(T)
    for layer in maps:
        a = layer.mean(0) + torch.eye(T)
        r = (a / a.sum(-1, keepdim=True)) @ r
    return r


def _rollout_variant(maps, *, residual=True, normalise=True, left=True, fuse="mean"):
    T = maps.shape[-1]
    r = torch.eye(T)
    for layer in maps:
        a = layer.mean(0) if fuse == "mean" else layer.max(0).values
        if residual:
            a = a + torch.eye(T)
        if normalise:
            a = a / a.sum(-1, keepdim=True)
        r = a @ r if left else r @ a
    return r


ROLLOUT_MUTANTS = {
    "no residual": lambda m: _rollout_variant(m, residual=False),
    "not renormalised": lambda m: _rollout_variant(m, normalise=False),
    "wrong order": lambda m: _rollout_variant(m, left=False),
    "max over heads": lambda m: _rollout_variant(m, fuse="max"),
    "last layer only": lambda m: _rollout_variant(m[-1:]),
}

CASES = [
    (check_row_entropy, entropy_ref, ENTROPY_MUTANTS),
    (check_previous_token_score, prev_ref, PREV_MUTANTS),
    (check_induction_score, induction_ref, INDUCTION_MUTANTS),
    (check_rollout, rollout_ref, ROLLOUT_MUTANTS),
]


test_reference_passes, test_mutant_fails, test_stub_not_done = checker_tests(CASES)


def test_messages_name_the_mistake():
    with pytest.raises(ExerciseFailed, match="NaN"):
        check_row_entropy(ENTROPY_MUTANTS["0 log 0 = NaN"])
    with pytest.raises(ExerciseFailed, match="T-1"):
        check_previous_token_score(PREV_MUTANTS["divides by T"])
    with pytest.raises(ExerciseFailed, match="PREVIOUS COPY"):
        check_induction_score(INDUCTION_MUTANTS["duplicate-token key i-P"])
    with pytest.raises(ExerciseFailed, match="identity"):
        check_rollout(ROLLOUT_MUTANTS["no residual"])
    with pytest.raises(ExerciseFailed, match="wrong order"):
        check_rollout(ROLLOUT_MUTANTS["wrong order"])


def test_library_agrees_with_the_checkers():
    """minigpt.analysis implements the same definitions the exercises teach."""
    from minigpt import analysis

    assert check_rollout(lambda m: analysis.attention_rollout(m)).passed
    assert check_previous_token_score(lambda A: analysis.previous_token_score(A)).passed
