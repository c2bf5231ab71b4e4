"""Checkers for notebook 09 (attention analysis).

The references are written here from the definitions (loops over queries,
``torch.distributions.Categorical`` for entropy), not with :mod:`minigpt.tools.analysis`, so a bug in the
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
        normalised = want / torch.arange(1, T + 1).float().log()  # inf/NaN at query 0, where ln 1 = 0
        expect(
            got.shape != want.shape or not _close(got[..., 1:], normalised[..., 1:], 1e-4),
            "you divided by ln(i + 1): that is the NORMALISED entropy of the notebook's table; the exercise asks "
            "for the entropy itself, in nats",
        )
        expect(
            not torch.isnan(got).any(),
            "some entropies are NaN: a causal row has zeros for the future keys and 0 * log(0) = 0 * -inf = NaN. "
            "Clamp the probabilities before the log (p.clamp_min(1e-12).log()) or use torch.special.xlogy.",
        )
        if _close(got, want, 1e-4):
            continue
        logA = A.clamp_min(1e-12).log()
        mistakes = [
            (-want, "your entropies are negative: H = -sum p log p, mind the minus sign"),
            (want / math.log(2), "these are bits (log base 2); use the natural log (torch.log) for nats"),
            (want / math.log(10), "these use log base 10; use the natural log (torch.log) for nats"),
            (-(A * logA).sum(-2), "you summed over the queries (dim=-2): each query ROW is a distribution, so sum "
             "over the keys, the last dimension (dim=-1)"),
            (want / T, "you took the mean over the keys: the entropy is a SUM over keys, -sum_j A[i, j] ln A[i, j]"),
            (-logA.sum(-1), "you summed -ln A[i, j] without weighting by A[i, j]: H_i = -sum_j A[i, j] ln A[i, j]"),
        ]
        for value, message in mistakes:
            expect(not _close(got, value, 1e-4), message)
        expect(
            False,
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


def _prev_mistakes(A: torch.Tensor) -> list[tuple[float, str]]:
    T = A.shape[-1]
    sub = torch.diagonal(A, offset=-1)
    return [
        (float(sub.sum() / T), "you divided by T: query 0 has no previous token, so average over the T-1 "
         "queries 1..T-1 only"),
        (float(torch.diagonal(A, offset=1).mean()), "you took A[i, i+1] (the future, always 0 in a causal map): "
         "the previous token is one BELOW the diagonal, A[i, i-1] = torch.diagonal(A, offset=-1)"),
        (float(torch.diagonal(A)[1:].mean()), "you took the diagonal A[i, i] (the self score): the previous "
         "token of query i is key i - 1, torch.diagonal(A, offset=-1)"),
        (float(torch.diagonal(A).mean()), "you took the diagonal A[i, i] (the self score): the previous token of "
         "query i is key i - 1, torch.diagonal(A, offset=-1)"),
        (float(torch.diagonal(A, offset=-2).mean()), "you took A[i, i-2], two tokens back: the previous token of "
         "query i is key i - 1 (torch.diagonal(A, offset=-1))"),
        (float(sub.sum()), "you summed A[i, i-1]: the score is their MEAN over the T-1 queries 1..T-1"),
        (float(sub.max()), "you took the largest A[i, i-1]: the score is their MEAN over the queries 1..T-1"),
        (float(A[1:, 0].mean()), "you averaged the first column A[i, 0] (the sink score): the previous-token "
         "score uses A[i, i-1]"),
        (float(sub[1:].mean()), "you left out query 1 (A[1, 0]): average A[i, i-1] over ALL queries i = 1..T-1"),
        (float(A[1:].max(-1).values.mean()), "you averaged each row's largest weight: the score is the weight on "
         "one particular key, A[i, i-1]"),
    ]


@checker("09.2 previous-token score")
def check_previous_token_score(fn) -> None:
    """fn(A (T, T)) -> mean of A[i, i-1] over queries i = 1..T-1 (a number or 0-d tensor)."""
    for seed, T in ((3, 7), (4, 7), (9, 5)):
        A = _random_causal_maps(T=T, seed=seed)
        got = _scalar(fn(A.clone()), "the score")
        want = float(_ref_previous_token(A))
        if abs(got - want) < 1e-5:
            continue
        for value, message in _prev_mistakes(A):
            expect(abs(got - value) > 1e-5 or abs(value - want) < 1e-5, message)
        expect(False, f"on a random causal map of {T} tokens expected {want:.4f}, got {got:.4f}: average A[i, i-1] "
               "over i = 1..T-1")
    # a pure previous-token head scores exactly 1, a head that only looks at itself 0
    T = 6
    prev = torch.zeros(T, T)
    prev[0, 0] = 1.0
    prev[torch.arange(1, T), torch.arange(T - 1)] = 1.0
    got = _scalar(fn(prev.clone()), "the score")
    expect(abs(got - 1.0) < 1e-5, f"a pure previous-token head should score exactly 1, got {got:.4f}")
    expect(abs(_scalar(fn(torch.eye(T)), "the score")) < 1e-6,
           "a head that only attends to itself got a non-zero previous-token score: use the entries A[i, i-1], "
           "not the diagonal A[i, i]")


def _ref_induction(A: torch.Tensor, period: int) -> torch.Tensor:
    return sum(A[i, i - period + 1] for i in range(period, 2 * period)) / period


def _induction_mistakes(A: torch.Tensor, P: int) -> list[tuple[float, str]]:
    q = torch.arange(P, 2 * P)
    return [
        (float(A[q, q - P].mean()), "you measured attention to the PREVIOUS COPY of the current token (key i - P, "
         "a duplicate-token head). An induction head looks one step further, at the token that came NEXT last "
         "time: key i - P + 1"),
        (float(torch.stack([A[i, max(i - P + 1, 0)] for i in range(2 * P)]).mean()), "you averaged over all 2P "
         "queries: the first half has nothing to repeat, so average over the P queries i = P..2P-1 only"),
        (float(A[q - 1, q - P].mean()), "your queries are off by one (i = P-1..2P-2): the second copy starts at "
         "i = P, so average A[i, i - P + 1] over i = P..2P-1"),
        (float(A[q, q - P + 1].sum() / (2 * P)), "you divided by 2P: average over the P queries of the second "
         "half"),
        (float(A[q, q - P + 1].sum()), "you summed A[i, i - P + 1]: the score is their MEAN over the P queries "
         "i = P..2P-1"),
        (float(A[q, q - P - 1].mean()), "you took key i - P - 1, the token BEFORE the earlier copy: an induction "
         "head looks at the token that came NEXT last time, key i - P + 1"),
        (float(A[q, q - P + 2].mean()), "you took key i - P + 2, one step too far: the token that followed the "
         "earlier copy of token i is at i - P + 1"),
        (float(A[q, q - 1].mean()), "you measured the previous-token score (key i - 1): an induction head looks at "
         "key i - P + 1, one step after the earlier copy of the current token"),
    ]


@checker("09.3 induction score")
def check_induction_score(fn) -> None:
    """fn(A (2P, 2P), period P) -> mean over i in [P, 2P) of A[i, i - P + 1]."""
    for seed, P in ((5, 5), (6, 5), (12, 4)):
        A = _random_causal_maps(T=2 * P, seed=seed)
        got = _scalar(fn(A.clone(), P), "the induction score")
        want = float(_ref_induction(A, P))
        if abs(got - want) < 1e-5:
            continue
        for value, message in _induction_mistakes(A, P):
            expect(abs(got - value) > 1e-5 or abs(value - want) < 1e-5, message)
        expect(False, f"on a random causal map with P={P} expected {want:.4f}, got {got:.4f}: average "
               "A[i, i - P + 1] over the second half i = P..2P-1 (the first half has nothing to repeat).")
    # a perfect induction head scores 1; a duplicate-token head (key i - P) scores 0
    P = 5
    T = 2 * P
    perfect = torch.zeros(T, T)
    perfect[:P] = torch.tril(torch.ones(P, T)) / torch.arange(1, P + 1).unsqueeze(1)  # first half: uniform
    dup = perfect.clone()
    for i in range(P, T):
        perfect[i, i - P + 1] = 1.0
        dup[i, i - P] = 1.0
    got = _scalar(fn(perfect.clone(), P), "the induction score")
    expect(abs(got - 1.0) < 1e-5, f"a perfect induction head (all weight on key i - P + 1 for every query i in "
           f"the second half) should score 1, got {got:.4f}")
    expect(_scalar(fn(dup.clone(), P), "the induction score") < 0.5,
           "a head that attends to the PREVIOUS COPY of the current token (key i - P) scores high with your code. "
           "An induction head looks one step further, at the token that came NEXT last time: key i - P + 1.")


def _rollout_variant(maps: torch.Tensor, fuse="mean", residual="before", norm_dim=-1, combine="matmul"):
    """Rollout done one (possibly wrong) way: how heads are fused, where I goes, which sums are 1, how layers
    combine. The defaults are the right way."""
    T = maps.shape[-1]
    r = torch.eye(T)
    for layer in maps:
        a = {"mean": layer.mean(0), "sum": layer.sum(0), "max": layer.max(0).values}[fuse]
        if residual == "before":  # "none": no identity at all
            a = a + torch.eye(T)
        a = a / a.sum(norm_dim, keepdim=True)
        if residual == "after":
            a = a + torch.eye(T)
        r = a @ r if combine == "matmul" else a * r
    return r


def _ref_rollout(maps: torch.Tensor) -> torch.Tensor:
    L, nh, T, _ = maps.shape
    r = torch.eye(T)
    for layer in range(L):
        a = sum(maps[layer, h] for h in range(nh)) / nh + torch.eye(T)
        a = a / a.sum(-1, keepdim=True)
        r = a @ r  # the new layer acts on what the layers below already mixed
    return r


def _rollout_named(got: torch.Tensor, maps: torch.Tensor, want: torch.Tensor) -> None:
    """Fail with the name of the mistake when got is what that mistake computes (and want is not)."""
    L, nh, T, _ = maps.shape
    r_rev = torch.eye(T)
    for layer in range(L):
        a = maps[layer].mean(0) + torch.eye(T)
        r_rev = r_rev @ (a / a.sum(-1, keepdim=True))
    mistakes = [
        (_rollout_variant(maps, residual="none"), "this is the plain product of head-averaged maps: add the "
         "identity (the residual connection carries each token's own information past the attention) before "
         "multiplying"),
        (r_rev, "the layers are multiplied in the wrong order: the rollout after layer l is A_l @ R_(l-1) (the "
         "higher layer on the LEFT), starting from the bottom layer"),
        (_rollout_variant(maps, combine="elementwise"), "you multiplied the layers elementwise (*): rollout "
         "composes them as matrices, R = A_layer @ R"),
        (_rollout_variant(maps, norm_dim=-2), "you normalised the COLUMNS: each row (one query) must sum to 1, "
         "divide by a.sum(-1, keepdim=True)"),
        (_rollout_variant(maps, fuse="sum"), "you summed the heads: AVERAGE them (mean over dim 0), so the "
         "identity weighs as much as the attention"),
        (_rollout_variant(maps, residual="after"), "each layer's rows sum to 2: you added the identity but did "
         "not divide by the row sums afterwards (add I first, then divide each row by its sum)"),
        (torch.stack([_rollout_variant(maps[:, h : h + 1]) for h in range(nh)]).mean(0),
         "you rolled out each head separately and averaged at the end: average the heads of each layer first, "
         "then add I, normalise and multiply"),
        (_rollout_variant(maps, fuse="max"), "you took the max over the heads: average them (mean over dim 0)"),
        (_rollout_variant(maps[-1:]), "you used only the last layer: multiply the maps of ALL layers, bottom up"),
        (_rollout_variant(maps[:1]), "you used only the first layer: multiply the maps of ALL layers, bottom up"),
    ]
    for value, message in mistakes:
        expect(not _close(got, value, 1e-4) or _close(value, want, 1e-4), message)


@checker("09.4 attention rollout")
def check_rollout(fn) -> None:
    """fn(maps (L, nh, T, T)) -> rollout (T, T): mean heads, + I, renormalise rows, multiply bottom-up."""
    # the hand-worked 2-layer example of the notebook, then random causal maps of several shapes
    l1 = torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[1.0, 0.0], [0.0, 1.0]]])
    l2 = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]]])
    cases = [torch.stack([l1, l2])]
    cases += [_random_causal_maps(L, nh, T=T, seed=seed, sharp=3.0) for seed, (L, nh, T) in
              [(7, (3, 2, 5)), (8, (2, 4, 6))]]
    for maps in cases:
        L, nh, T, _ = maps.shape
        got = _tensor(fn(maps.clone()), "the rollout")
        want = _ref_rollout(maps)
        expect(got.shape == want.shape, f"the rollout of T={T} tokens is one (T, T) map: expected shape "
               f"{tuple(want.shape)}, got {tuple(got.shape)}")
        if _close(got, want, 1e-4):
            continue
        _rollout_named(got, maps, want)
        expect(
            _close(got.sum(-1), torch.ones(T), 1e-4),
            f"the rollout rows sum to {[round(v, 4) for v in got.sum(-1).tolist()]}, not 1: after adding the "
            "identity, divide every row by its sum so each layer stays a probability map.",
        )
        expect(False, f"for maps of shape {tuple(maps.shape)} the rollout does not match: for each layer average "
               "the heads, add the identity, divide each row by its sum, then R = A_layer @ R"
               + (f" (expected {want.tolist()}, got {got.tolist()})" if T == 2 else ""))
