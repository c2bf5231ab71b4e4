"""Checkers for notebook 09 (attention analysis).

The references are written here from the definitions (loops over queries,
``torch.distributions.Categorical`` for entropy), not with :mod:`minigpt.analysis`, so a bug in the
library cannot hide a bug in an answer.
"""

from __future__ import annotations

import math

import torch

from ._core import checker, expect

__all__ = [
    "check_row_entropy",
    "check_previous_token_score",
    "check_induction_score",
    "check_rollout",
]


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=tol, rtol=tol)


def _tensor(x, what: str) -> torch.Tensor:
    if isinstance(x, float | int):
        x = torch.tensor(float(x))
    expect(isinstance(x, torch.Tensor), f"{what} should be a torch.Tensor (or a number), got {type(x).__name__}")
    return x.detach().float()


def _scalar(x, what: str) -> float:
    t = _tensor(x, what)
    expect(t.numel() == 1, f"{what} is one number per head, got a tensor of shape {tuple(t.shape)}")
    return float(t.reshape(()))


def _random_causal_maps(*shape: int, T: int, seed: int, sharp: float = 2.0) -> torch.Tensor:
    """Random causal attention maps (..., T, T): softmax of random scores with the future masked."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(*shape, T, T, generator=g) * sharp
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    return scores.masked_fill(future, float("-inf")).softmax(-1)


@checker("09.1 entropy of attention rows")
def check_row_entropy(fn) -> None:
    """fn(A (..., T, T)) -> entropy of every query row in nats, (..., T); 0 log 0 counts as 0."""
    for shape, T, seed in [((), 5, 0), ((2, 3), 7, 1)]:
        A = _random_causal_maps(*shape, T=T, seed=seed)
        got = _tensor(fn(A.clone()), "the row entropies")
        want = torch.distributions.Categorical(probs=A).entropy()  # (..., T)
        expect(
            got.shape == want.shape,
            f"for maps of shape {tuple(A.shape)} expected one entropy per query row, shape {tuple(want.shape)}; "
            f"got {tuple(got.shape)}. Sum over the keys (the last dim) only.",
        )
        expect(
            not torch.isnan(got).any(),
            "some entropies are NaN: a causal row has zeros for the future keys and 0 * log(0) = 0 * -inf = NaN. "
            "Clamp the probabilities before the log (p.clamp_min(1e-12).log()) or use torch.special.xlogy.",
        )
        expect(not _close(got, -want), "your entropies are negative: H = -sum p log p, mind the minus sign")
        expect(not _close(got, want / math.log(2)), "these are bits (log base 2); use the natural log for nats")
        expect(
            _close(got, want, 1e-4),
            "the entropies do not match H_i = -sum_j A[i, j] ln A[i, j]: sum over keys j for every query row i.",
        )
    # hand-made cases: a one-hot row has entropy 0, a uniform row over n keys has ln(n)
    A = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    got = _tensor(fn(A.clone()), "the row entropies")
    want = torch.tensor([0.0, math.log(2), math.log(3)])
    expect(_close(got, want, 1e-4), f"for rows one-hot, uniform over 2 and 3 keys expected {want.tolist()}, "
           f"got {got.tolist()}")


def _ref_previous_token(A: torch.Tensor) -> torch.Tensor:
    T = A.shape[-1]
    return sum(A[..., i, i - 1] for i in range(1, T)) / (T - 1)


@checker("09.2 previous-token score")
def check_previous_token_score(fn) -> None:
    """fn(A (T, T)) -> mean of A[i, i-1] over queries i = 1..T-1 (a number or 0-d tensor)."""
    # a pure previous-token head scores 1
    T = 6
    prev = torch.zeros(T, T)
    prev[0, 0] = 1.0
    prev[torch.arange(1, T), torch.arange(T - 1)] = 1.0
    got = _scalar(fn(prev.clone()), "the score")
    expect(
        abs(got - (T - 1) / T) > 1e-6,
        f"a pure previous-token head should score 1 but yours gives {(T - 1) / T:.3f} = (T-1)/T: query 0 has "
        "no previous token, so average over the T-1 queries 1..T-1 only.",
    )
    expect(
        abs(got) > 1e-6,
        "a pure previous-token head scores 0 with your code: take A[i, i-1] (one below the diagonal, "
        "torch.diagonal(A, offset=-1)), not A[i, i+1] (the future, always 0 in a causal map).",
    )
    expect(abs(got - 1.0) < 1e-5, f"a pure previous-token head should score exactly 1, got {got:.4f}")
    eye = torch.eye(T)
    expect(abs(_scalar(fn(eye), "the score")) < 1e-6,
           "a head that only attends to itself got a non-zero previous-token score: use the entries A[i, i-1], "
           "not the diagonal A[i, i]")
    for seed in (3, 4):
        A = _random_causal_maps(T=7, seed=seed)
        got = _scalar(fn(A.clone()), "the score")
        want = float(_ref_previous_token(A))
        expect(abs(got - want) < 1e-5,
               f"on a random causal map expected {want:.4f}, got {got:.4f}: "
               "average A[i, i-1] over i = 1..T-1")


def _ref_induction(A: torch.Tensor, period: int) -> torch.Tensor:
    return sum(A[i, i - period + 1] for i in range(period, 2 * period)) / period


@checker("09.3 induction score")
def check_induction_score(fn) -> None:
    """fn(A (2P, 2P), period P) -> mean over i in [P, 2P) of A[i, i - P + 1]."""
    P = 5
    T = 2 * P
    perfect = torch.zeros(T, T)
    perfect[:P] = torch.tril(torch.ones(P, T)) / torch.arange(1, P + 1).unsqueeze(1)  # first half: uniform
    for i in range(P, T):
        perfect[i, i - P + 1] = 1.0
    got = _scalar(fn(perfect.clone(), P), "the induction score")
    dup = torch.zeros(T, T)
    dup[:P] = perfect[:P]
    for i in range(P, T):
        dup[i, i - P] = 1.0  # a "duplicate-token" head: attends to the earlier copy of itself
    got_dup = _scalar(fn(dup.clone(), P), "the induction score")
    expect(
        got_dup < 0.5,
        "a head that attends to the PREVIOUS COPY of the current token (key i - P) scores high with your code. "
        "An induction head looks one step further, at the token that came NEXT last time: key i - P + 1.",
    )
    expect(abs(got - 1.0) < 1e-5,
           f"a perfect induction head (all weight on key i - P + 1 for every query i in the second half) should "
           f"score 1, got {got:.4f}. Average over the P queries i = P..2P-1 only.")
    for seed in (5, 6):
        A = _random_causal_maps(T=T, seed=seed)
        got = _scalar(fn(A.clone(), P), "the induction score")
        want = float(_ref_induction(A, P))
        expect(
            abs(got - want) < 1e-5,
            f"on a random causal map expected {want:.4f}, got {got:.4f}: average "
            "A[i, i - P + 1] over the second half i = P..2P-1 (the first half has nothing to repeat).",
        )


def _ref_rollout(maps: torch.Tensor) -> torch.Tensor:
    L, nh, T, _ = maps.shape
    r = torch.eye(T)
    for layer in range(L):
        a = sum(maps[layer, h] for h in range(nh)) / nh + torch.eye(T)
        a = a / a.sum(-1, keepdim=True)
        r = a @ r  # the new layer acts on what the layers below already mixed
    return r


@checker("09.4 attention rollout")
def check_rollout(fn) -> None:
    """fn(maps (L, nh, T, T)) -> rollout (T, T): mean heads, + I, renormalise rows, multiply bottom-up."""
    # the hand-worked 2-layer example of the notebook
    l1 = torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[1.0, 0.0], [0.0, 1.0]]])
    l2 = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]]])
    got = _tensor(fn(torch.stack([l1, l2])), "the rollout")
    want = torch.tensor([[1.0, 0.0], [0.5625, 0.4375]])
    expect(got.shape == (2, 2), f"the rollout of T=2 tokens is one (T, T) map, got shape {tuple(got.shape)}")
    expect(
        _close(got.sum(-1), torch.ones(2)),
        f"the rollout rows sum to {got.sum(-1).tolist()}, not 1: after adding the identity, divide every row by "
        "its sum (here by 2) so each layer stays a probability map.",
    )
    no_residual = l2.mean(0) @ l1.mean(0)
    expect(not _close(got, no_residual), "this is the plain product of head-averaged maps: add the identity "
           "(the residual connection carries each token's own information past the attention) before multiplying")
    expect(_close(got, want, 1e-4), f"for the two-layer example expected {want.tolist()}, got {got.tolist()}")
    for seed, (L, nh, T) in [(7, (3, 2, 5)), (8, (2, 4, 6))]:
        maps = _random_causal_maps(L, nh, T=T, seed=seed, sharp=3.0)
        got = _tensor(fn(maps.clone()), "the rollout")
        want = _ref_rollout(maps)
        expect(got.shape == want.shape, f"expected shape {tuple(want.shape)}, got {tuple(got.shape)}")
        r_rev = torch.eye(T)
        for layer in range(L):
            a = maps[layer].mean(0) + torch.eye(T)
            r_rev = r_rev @ (a / a.sum(-1, keepdim=True))
        expect(not _close(got, r_rev, 1e-4) or _close(r_rev, want, 1e-4),
               "the layers are multiplied in the wrong order: the rollout after layer l is A_l @ R_(l-1) "
               "(the higher layer on the LEFT), starting from the bottom layer")
        expect(_close(got, want, 1e-4), "the rollout does not match: for each layer average the heads, add the "
               "identity, divide each row by its sum, then R = A_layer @ R")
