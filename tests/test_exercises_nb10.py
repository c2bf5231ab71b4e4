"""Checkers of notebook 10: each passes the reference answer, fails plausible wrong answers, and reports stubs."""

import math

import numpy as np
import torch
import torch.nn as nn
from _exercise_cases import checker_tests, stub  # noqa: F401

from minigpt.exercises.nb10 import (
    check_accumulate_gradients,
    check_clip_grad_norm,
    check_newton_schulz,
    check_power_law_fit,
    check_warmup_cosine,
)
from minigpt.schedule import lr_at


# ---- 10.1 warmup + cosine
def lr_ref(step, max_lr, min_lr, warmup, total):  # the library's schedule is the same formula
    return lr_at(step, lr=max_lr, min_lr=min_lr, warmup_iters=warmup, decay_iters=total, schedule="cosine")


def lr_no_warmup(step, max_lr, min_lr, warmup, total):
    return lr_ref(step, max_lr, min_lr, 0, total) if step < total else min_lr


def lr_decays_to_zero(step, max_lr, min_lr, warmup, total):
    return lr_ref(step, max_lr, 0.0, warmup, total)


def lr_no_floor(step, max_lr, min_lr, warmup, total):  # cosine keeps going past total
    if step < warmup:
        return max_lr * (step + 1) / (warmup + 1)
    progress = (step - warmup) / (total - warmup)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr)


# ---- 10.2 accumulation
def accum_ref(model, x, y, n_micro):
    loss_fn = nn.CrossEntropyLoss()
    for xb, yb in zip(x.chunk(n_micro), y.chunk(n_micro)):
        (loss_fn(model(xb), yb) / n_micro).backward()


def accum_no_divide(model, x, y, n_micro):
    loss_fn = nn.CrossEntropyLoss()
    for xb, yb in zip(x.chunk(n_micro), y.chunk(n_micro)):
        loss_fn(model(xb), yb).backward()


def accum_zero_between(model, x, y, n_micro):
    loss_fn = nn.CrossEntropyLoss()
    for xb, yb in zip(x.chunk(n_micro), y.chunk(n_micro)):
        model.zero_grad()
        (loss_fn(model(xb), yb) / n_micro).backward()


def accum_first_only(model, x, y, n_micro):
    nn.CrossEntropyLoss()(model(x.chunk(n_micro)[0]), y.chunk(n_micro)[0]).backward()


# ---- 10.3 clipping
def clip_ref(params, max_norm):
    total = torch.sqrt(sum((p.grad**2).sum() for p in params))
    factor = min(1.0, max_norm / (float(total) + 1e-6))
    for p in params:
        p.grad.mul_(factor)
    return total


def clip_per_tensor(params, max_norm):
    norms = [p.grad.norm() for p in params]
    for p, n in zip(params, norms):
        p.grad.mul_(min(1.0, max_norm / float(n)))
    return torch.sqrt(sum(n**2 for n in norms))


def clip_always(params, max_norm):  # scales small gradients UP to max_norm
    total = torch.sqrt(sum((p.grad**2).sum() for p in params))
    for p in params:
        p.grad.mul_(max_norm / float(total))
    return total


def clip_returns_after(params, max_norm):
    clip_ref(params, max_norm)
    return torch.sqrt(sum((p.grad**2).sum() for p in params))


# ---- 10.4 power law
def fit_ref(N, L):
    slope, intercept = np.polyfit(np.log(N), np.log(L), 1)
    return float(np.exp(intercept)), float(-slope)


def fit_sign(N, L):
    a, b = fit_ref(N, L)
    return a, -b


def fit_log10_mixup(N, L):
    slope, intercept = np.polyfit(np.log10(N), np.log10(L), 1)
    return float(np.exp(intercept)), float(-slope)


def fit_two_points(N, L):
    b = -math.log(L[-1] / L[0]) / math.log(N[-1] / N[0])
    return L[0] * N[0] ** b, b


# ---- 10.5 Newton-Schulz
def ns_ref(G, steps):
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G / G.norm()
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X


def ns_library(G, steps):  # the library's batched version is a correct answer too
    from minigpt.optim import newton_schulz

    return newton_schulz(G, steps)


def ns_svd(G, steps):
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    return U @ Vh


def ns_ref_unnormalised(G, steps):
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X


def ns_one_step_short(G, steps):
    return ns_ref(G, steps - 1) if steps > 1 else G / G.norm()


def ns_swapped_coefficients(G, steps):
    a, b, c = 3.4445, 2.0315, -4.7750
    X = G / G.norm()
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X


def ns_gram_on_the_right(G, steps):  # X^T X: fails on non-square matrices
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G / G.norm()
    for _ in range(steps):
        A = X.T @ X
        X = a * X + (b * A + c * A @ A) @ X
    return X


CASES = [
    (check_warmup_cosine, lr_ref, [lr_no_warmup, lr_decays_to_zero, lr_no_floor]),
    (check_accumulate_gradients, accum_ref, [accum_no_divide, accum_zero_between, accum_first_only]),
    (check_clip_grad_norm, clip_ref, [clip_per_tensor, clip_always, clip_returns_after]),
    (check_power_law_fit, fit_ref, [fit_sign, fit_log10_mixup, fit_two_points]),
    (check_newton_schulz, ns_ref, [ns_svd, ns_ref_unnormalised, ns_one_step_short, ns_swapped_coefficients,
                                   ns_gram_on_the_right]),
]


def test_the_library_newton_schulz_passes_the_checker():
    assert check_newton_schulz(ns_library).passed


test_reference_passes, test_mutant_fails, test_stub_not_done = checker_tests(CASES)
