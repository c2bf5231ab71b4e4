"""Checkers for notebook 10 (training at scale).

References are independent of the student's code: the warmup-cosine schedule written out from its
formula with ``math.cos``, full-batch gradients from one backward pass, ``torch.nn.utils.clip_grad_norm_``,
power laws with known exponents, and Newton-Schulz iterations computed on the singular values of an SVD.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from ._core import checker, expect

__all__ = ["check_warmup_cosine", "check_accumulate_gradients", "check_clip_grad_norm", "check_power_law_fit",
           "check_newton_schulz"]


# ------------------------------------------------------------------ 10.1 warmup + cosine


def _reference_lr(step: int, max_lr: float, min_lr: float, warmup: int, total: int) -> float:
    if step < warmup:
        return max_lr * (step + 1) / (warmup + 1)
    if step >= total:
        return min_lr
    progress = (step - warmup) / (total - warmup)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr)


@checker("10.1 warmup + cosine schedule")
def check_warmup_cosine(fn) -> None:
    """fn(step, max_lr, min_lr, warmup, total) -> float."""
    for max_lr, min_lr, warmup, total in [(1e-3, 1e-4, 10, 100), (6e-4, 0.0, 0, 50), (3e-3, 3e-4, 25, 60)]:
        for step in list(range(0, total + 20, 3)) + [warmup, total - 1, total, (warmup + total) // 2]:
            got = fn(step, max_lr, min_lr, warmup, total)
            want = _reference_lr(step, max_lr, min_lr, warmup, total)
            if math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-12):
                continue
            if step < warmup:
                expect(False, f"step {step} is inside the warmup ({warmup} steps): expected {want:.3g} = "
                              f"max_lr * (step + 1) / (warmup + 1), got {got:.3g}")
            if step >= total:
                expect(False, f"after the decay (step {step} >= total {total}) the rate stays at min_lr = {min_lr}, "
                              f"got {got:.3g}")
            if step == warmup:
                expect(False, f"the decay starts at the peak: step {warmup} should give max_lr = {max_lr}, "
                              f"got {got:.3g}")
            expect(False, f"step {step}: cosine decay should give {want:.4g} (min_lr + 0.5 (1 + cos(pi * progress)) "
                          f"(max_lr - min_lr), progress = (step - warmup) / (total - warmup)), got {got:.4g}")


# ------------------------------------------------------------------ 10.2 gradient accumulation


def _toy_model(seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


@checker("10.2 gradient accumulation")
def check_accumulate_gradients(fn) -> None:
    """fn(model, x, y, n_micro) leaves in p.grad the gradient of the mean loss over the whole batch."""
    loss_fn = nn.CrossEntropyLoss()
    for seed, batch, n_micro in [(0, 8, 4), (1, 12, 3), (2, 6, 1)]:
        g = torch.Generator().manual_seed(seed + 100)
        x = torch.randn(batch, 6, generator=g)
        y = torch.randint(0, 3, (batch,), generator=g)
        ref = _toy_model(seed)
        loss_fn(ref(x), y).backward()  # the big-batch gradient in one pass
        student = _toy_model(seed)
        fn(student, x, y, n_micro)
        for (name, p), q in zip(student.named_parameters(), ref.parameters()):
            expect(p.grad is not None, f"parameter {name} has no gradient: call loss.backward() for each micro-batch")
            if torch.allclose(p.grad, q.grad * n_micro, atol=1e-6) and n_micro > 1:
                expect(False, f"the gradients are {n_micro}x too large: divide each micro-batch loss by n_micro "
                              "so the sum of the micro-batch gradients is the mean over the whole batch")
            expect(torch.allclose(p.grad, q.grad, atol=1e-6),
                   f"gradient of {name} differs from the big-batch gradient (max diff "
                   f"{(p.grad - q.grad).abs().max():.2e}). Do not zero the gradients between micro-batches, and "
                   "use every example exactly once")


# ------------------------------------------------------------------ 10.3 clip the gradient norm


@checker("10.3 clip the global gradient norm")
def check_clip_grad_norm(fn) -> None:
    """fn(params, max_norm) scales every .grad in place so the global norm is <= max_norm; returns the norm before."""
    g = torch.Generator().manual_seed(0)
    for max_norm, scale in [(1.0, 3.0), (0.5, 0.01), (2.0, 10.0)]:
        grads = [torch.randn(4, 5, generator=g) * scale, torch.randn(7, generator=g) * scale * 3]
        mine = [nn.Parameter(torch.zeros_like(t)) for t in grads]
        ref = [nn.Parameter(torch.zeros_like(t)) for t in grads]
        for p, q, t in zip(mine, ref, grads):
            p.grad, q.grad = t.clone(), t.clone()
        total = fn(mine, max_norm)
        want = torch.nn.utils.clip_grad_norm_(ref, max_norm)
        expect(total is not None and math.isclose(float(total), float(want), rel_tol=1e-5),
               f"return the global norm BEFORE clipping, sqrt(sum of all squared gradient entries) = "
               f"{float(want):.4g}; got {total!r}")
        for i, (p, q) in enumerate(zip(mine, ref)):
            if float(want) <= max_norm:
                expect(torch.allclose(p.grad, q.grad, atol=1e-6),
                       f"the norm {float(want):.3g} is already below max_norm={max_norm}: leave the gradients alone "
                       "(clipping only ever scales down)")
            expect(torch.allclose(p.grad, q.grad, atol=1e-6),
                   f"gradient {i} is wrong after clipping: scale ALL gradients by the same factor "
                   "max_norm / total_norm (one global norm, not one per tensor), so the update keeps its direction")


# ------------------------------------------------------------------ 10.4 fit a power law


@checker("10.4 fit a power law")
def check_power_law_fit(fn) -> None:
    """fn(N, L) -> (a, b) with L ~ a * N ** (-b), fitted by least squares in log-log space."""
    g = torch.Generator().manual_seed(0)
    for a, b in [(12.0, 0.08), (3.5, 0.3), (40.0, 0.05)]:
        N = torch.logspace(3, 7, 6, dtype=torch.float64)
        L = a * N ** (-b)
        got = fn(N.tolist(), L.tolist())
        expect(isinstance(got, tuple | list) and len(got) == 2, "return a pair (a, b)")
        ga, gb = float(got[0]), float(got[1])
        if math.isclose(gb, -b, rel_tol=1e-3):
            expect(False, f"b has the wrong sign: with L = a * N**(-b) a loss that falls with N has b > 0 "
                          f"(expected {b}, got {gb})")
        expect(math.isclose(gb, b, rel_tol=1e-3), f"exponent b: expected {b}, got {gb:.4g}. Fit a straight line to "
                                                  "(log N, log L): its slope is -b")
        expect(math.isclose(ga, a, rel_tol=1e-3), f"prefactor a: expected {a}, got {ga:.4g}. The intercept of the "
                                                  "line is log a, so a = exp(intercept) (same log base as the fit)")
    # with noise, the answer must be the least-squares line in log space (what np.polyfit gives)
    N = torch.logspace(3, 6, 8, dtype=torch.float64)
    L = 5.0 * N ** (-0.1) * torch.exp(0.05 * torch.randn(8, generator=g, dtype=torch.float64))
    X = torch.stack([torch.ones(8, dtype=torch.float64), N.log()], dim=1)
    coef = torch.linalg.lstsq(X, L.log().unsqueeze(1)).solution.flatten()
    ga, gb = (float(v) for v in fn(copy.copy(N.tolist()), copy.copy(L.tolist())))
    expect(math.isclose(gb, -float(coef[1]), rel_tol=1e-4) and math.isclose(ga, math.exp(float(coef[0])), rel_tol=1e-4),
           "on noisy points the fit should be ordinary least squares on (log N, log L); fitting L itself (not its "
           "log) or dropping points gives a different line")


# ------------------------------------------------------------------ 10.5 Newton-Schulz orthogonalisation

_NS = (3.4445, -4.7750, 2.0315)


def _ns_by_svd(G: torch.Tensor, steps: int, coeffs=_NS, normalise: bool = True) -> torch.Tensor:
    """What `steps` quintic Newton-Schulz iterations do, computed on the singular values: U p(...p(s)) V^T."""
    a, b, c = coeffs
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    s = S / G.norm() if normalise else S
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return U @ torch.diag(s) @ Vh


@checker("10.5 Newton-Schulz orthogonalisation")
def check_newton_schulz(fn) -> None:
    """fn(G, steps) -> X: `steps` quintic Newton-Schulz iterations on G / ||G||_F, the same shape as G."""
    g = torch.Generator().manual_seed(0)
    for shape, steps in [((6, 10), 5), ((10, 6), 5), ((8, 8), 3), ((5, 12), 1)]:
        G = torch.randn(shape, generator=g, dtype=torch.float64) * 2.0
        X = fn(G.clone(), steps)
        expect(isinstance(X, torch.Tensor) and tuple(X.shape) == shape,
               f"for G of shape {shape} return a tensor of the same shape, got "
               f"{tuple(X.shape) if isinstance(X, torch.Tensor) else type(X).__name__}")
        X = X.to(torch.float64)
        want = _ns_by_svd(G, steps)
        if torch.allclose(X, want, atol=1e-6, rtol=1e-5):
            continue
        U, _, Vh = torch.linalg.svd(G, full_matrices=False)
        if torch.allclose(X, U @ Vh, atol=1e-6):
            expect(False, "that is the exact polar factor U V^T from an SVD; the exercise is the Newton-Schulz "
                          "iteration, whose singular values land near 1 (about 0.7-1.2), not exactly on it")
        if not torch.isfinite(X).all() or torch.allclose(X, _ns_by_svd(G, steps, normalise=False), atol=1e-6):
            expect(False, "divide G by its Frobenius norm G.norm() first: the iteration only maps singular values "
                          "in (0, 1] towards 1, larger ones blow up")
        for k in range(1, 8):
            if k != steps and torch.allclose(X, _ns_by_svd(G, k), atol=1e-6, rtol=1e-5):
                expect(False, f"you ran {k} iteration(s) where steps={steps} were asked for")
        expect(False, f"G of shape {shape}, {steps} steps: the result differs from the iteration "
                      "X <- a X + (b A + c A A) X with A = X X^T and (a, b, c) = (3.4445, -4.7750, 2.0315) "
                      f"(max difference {(X - want).abs().max():.2e}). Check the coefficients and that A = X X^T "
                      "multiplies X from the left")
