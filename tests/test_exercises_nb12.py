"""Checkers of notebook 12: each passes the reference answer, fails plausible wrong answers with a message that
names the mistake, and reports stubs."""

import math

import numpy as np
import torch
import torch.nn as nn
from _exercise_cases import checker_tests, stub  # noqa: F401

from minigpt.exercises.nb12 import (
    check_accumulate_gradients,
    check_clip_grad_norm,
    check_newton_schulz,
    check_power_law_fit,
    check_warmup_cosine,
)
from minigpt.schedule import lr_at


# ---- 12.1 warmup + cosine
def lr_ref(step, max_lr, min_lr, warmup, total):  # the library's schedule is the same formula
    return lr_at(step, lr=max_lr, min_lr=min_lr, warmup_iters=warmup, decay_iters=total, schedule="cosine")


def lr_hand(step, max_lr, min_lr, warmup, total):  # the notebook's solution
    if step < warmup:
        return max_lr * (step + 1) / (warmup + 1)
    if step >= total:
        return min_lr
    progress = (step - warmup) / (total - warmup)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def lr_with(warm=None, decay=None, after=None):
    def lr(step, max_lr, min_lr, warmup, total):
        part = (warm if step < warmup else after if step >= total else decay) or lr_hand
        return part(step, max_lr, min_lr, warmup, total)
    return lr


def cos_part(step, max_lr, min_lr, warmup, total, span=None, pi=math.pi):
    progress = (step - warmup) / (span if span is not None else total - warmup)
    return min_lr + 0.5 * (1 + math.cos(pi * progress)) * (max_lr - min_lr)


def lr_no_warmup(step, max_lr, min_lr, warmup, total):
    return lr_ref(step, max_lr, min_lr, 0, total) if step < total else min_lr


LR_MUTANTS = {
    "no_warmup": (lr_no_warmup, r"warmup|step 0|inside the warmup"),
    "decays_to_zero": (lambda s, hi, lo, w, t: lr_ref(s, hi, 0.0, w, t), r"towards 0 instead of min_lr"),
    "no_floor": (lr_with(after=cos_part), r"climbs back up"),
    "warmup_from_zero": (lr_with(warm=lambda s, hi, lo, w, t: hi * s / w), r"warmup starts at 0"),
    "warmup_peaks_early": (lr_with(warm=lambda s, hi, lo, w, t: hi * (s + 1) / w), r"one step early"),
    "progress_over_total": (lr_with(decay=lambda s, hi, lo, w, t: cos_part(s, hi, lo, w, t, span=t)),
                            r"divide by \(total - warmup\), not total"),
    "decay_ignores_warmup": (lr_with(decay=lambda s, hi, lo, w, t: cos_part(s + w, hi, lo, w, t)),
                             r"ignores the warmup"),
    "linear_decay": (lr_with(decay=lambda s, hi, lo, w, t: hi - (s - w) / (t - w) * (hi - lo)), r"linear decay"),
    "cos_without_pi": (lr_with(decay=lambda s, hi, lo, w, t: cos_part(s, hi, lo, w, t, pi=1.0)), r"without pi"),
    "zero_after_total": (lr_with(after=lambda s, hi, lo, w, t: 0.0), r"min_lr, not 0"),
}


# ---- 12.2 accumulation
def accum_ref(model, x, y, n_micro):
    loss_fn = nn.CrossEntropyLoss()
    for xb, yb in zip(x.chunk(n_micro), y.chunk(n_micro)):
        (loss_fn(model(xb), yb) / n_micro).backward()


def accum_split_by_size_right(model, x, y, n_micro):  # torch.split with the right piece size is correct
    loss_fn = nn.CrossEntropyLoss()
    size = len(x) // n_micro
    for xb, yb in zip(torch.split(x, size), torch.split(y, size)):
        (loss_fn(model(xb), yb) / n_micro).backward()


def accum_split(model, x, y, n_micro):  # torch.split(x, n) makes pieces of size n
    loss_fn = nn.CrossEntropyLoss()
    for xb, yb in zip(torch.split(x, n_micro), torch.split(y, n_micro)):
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


def accum_step_each(model, x, y, n_micro):  # an optimizer step per micro-batch
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    for xb, yb in zip(x.chunk(n_micro), y.chunk(n_micro)):
        (loss_fn(model(xb), yb) / n_micro).backward()
        opt.step()


def accum_whole_batch(model, x, y, n_micro):  # right gradient, but no micro-batches at all
    nn.CrossEntropyLoss()(model(x), y).backward()


def accum_one_backward(model, x, y, n_micro):  # right gradient, but every graph kept until the end
    loss_fn = nn.CrossEntropyLoss()
    sum(loss_fn(model(xb), yb) / n_micro for xb, yb in zip(x.chunk(n_micro), y.chunk(n_micro))).backward()


def accum_divide_by_batch(model, x, y, n_micro):
    loss_fn = nn.CrossEntropyLoss()
    for xb, yb in zip(x.chunk(n_micro), y.chunk(n_micro)):
        (loss_fn(model(xb), yb) / len(x)).backward()


def accum_sum_reduction(model, x, y, n_micro):
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    for xb, yb in zip(x.chunk(n_micro), y.chunk(n_micro)):
        (loss_fn(model(xb), yb) / n_micro).backward()


ACCUM_MUTANTS = {
    "split_by_size": (accum_split, r"pieces of SIZE"),
    "no_divide": (accum_no_divide, r"too large: divide each micro-batch loss by n_micro"),
    "zero_between": (accum_zero_between, r"zeroed the gradients between micro-batches"),
    "first_only": (accum_first_only, r"first micro-batch"),
    "optimizer_step_each": (accum_step_each, r"changed the weights"),
    "whole_batch_at_once": (accum_whole_batch, r"whole batch .* at once"),
    "one_backward": (accum_one_backward, r"backward\(\) once"),
    "divide_by_batch_size": (accum_divide_by_batch, r"divided each micro-batch loss by the batch size"),
    "sum_reduction": (accum_sum_reduction, r"times the big-batch gradient"),
}


# ---- 12.3 clipping
def clip_ref(params, max_norm):  # the notebook's solution: the iterable is read once
    params = [p for p in params if p.grad is not None]
    total = torch.sqrt(sum((p.grad.detach() ** 2).sum() for p in params))
    factor = min(1.0, max_norm / (float(total) + 1e-6))
    for p in params:
        p.grad.mul_(factor)
    return total


def clip_torch(params, max_norm):
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


def clip_iterates_twice(params, max_norm):  # issue 12: fine on a list, clips nothing on model.parameters()
    total = torch.sqrt(sum((p.grad**2).sum() for p in params if p.grad is not None))
    factor = min(1.0, max_norm / (float(total) + 1e-6))
    for p in params:
        if p.grad is not None:
            p.grad.mul_(factor)
    return total


def live(params):
    return [p for p in params if p.grad is not None]


def clip_per_tensor(params, max_norm):
    params = live(params)
    norms = [p.grad.norm() for p in params]
    for p, n in zip(params, norms):
        p.grad.mul_(min(1.0, max_norm / (float(n) + 1e-6)))
    return torch.sqrt(sum(n**2 for n in norms))


def clip_always(params, max_norm):  # scales small gradients UP to max_norm
    params = live(params)
    total = torch.sqrt(sum((p.grad**2).sum() for p in params))
    for p in params:
        p.grad.mul_(max_norm / (float(total) + 1e-6))
    return total


def clip_returns_after(params, max_norm):
    params = live(params)
    clip_ref(params, max_norm)
    return torch.sqrt(sum((p.grad**2).sum() for p in params))


def clip_no_eps(params, max_norm):
    params = live(params)
    total = torch.sqrt(sum((p.grad**2).sum() for p in params))
    if total > max_norm:
        for p in params:
            p.grad.mul_(max_norm / float(total))
    return total


def clip_not_in_place(params, max_norm):
    params = live(params)
    total = torch.sqrt(sum((p.grad**2).sum() for p in params))
    factor = min(1.0, max_norm / (float(total) + 1e-6))
    for p in params:
        g = p.grad
        g = g * factor  # noqa: F841 - a new tensor, p.grad is untouched
    return total


def clip_sum_of_norms(params, max_norm):
    params = live(params)
    total = sum(p.grad.norm() for p in params)
    for p in params:
        p.grad.mul_(min(1.0, max_norm / (float(total) + 1e-6)))
    return total


def clip_returns_squares(params, max_norm):
    params = live(params)
    sq = sum((p.grad**2).sum() for p in params)
    clip_ref(params, max_norm)
    return sq


def clip_weights_norm(params, max_norm):
    params = live(params)
    total = torch.sqrt(sum((p.detach() ** 2).sum() for p in params))
    for p in params:
        p.grad.mul_(min(1.0, max_norm / (float(total) + 1e-6)))
    return total


def clip_ignores_none(params, max_norm):
    params = list(params)
    total = torch.sqrt(sum((p.grad**2).sum() for p in params))
    for p in params:
        p.grad.mul_(min(1.0, max_norm / (float(total) + 1e-6)))
    return total


def clip_float_division(params, max_norm):  # no eps, in plain Python: divides by zero
    params = live(params)
    total = float(torch.sqrt(sum((p.grad**2).sum() for p in params)))
    factor = min(1.0, max_norm / total)
    for p in params:
        p.grad.mul_(factor)
    return total


CLIP_MUTANTS = {
    "iterates_twice": (clip_iterates_twice, r"generator.*list\(params\)"),
    "per_tensor": (clip_per_tensor, r"each tensor by its own norm"),
    "scales_up": (clip_always, r"already below max_norm"),
    "returns_after": (clip_returns_after, r"norm AFTER clipping"),
    "no_eps": (clip_no_eps, r"1e-6"),
    "not_in_place": (clip_not_in_place, r"in place"),
    "sum_of_norms": (clip_sum_of_norms, r"not the sum of the per-tensor norms"),
    "returns_sum_of_squares": (clip_returns_squares, r"square root"),
    "norm_of_weights": (clip_weights_norm, r"norm of the weights"),
    "crashes_on_frozen": (clip_ignores_none, r"grad is None"),
    "zero_division": (clip_float_division, r"all-zero"),
    "calls_torch": (clip_torch, r"clip_grad_norm_: the exercise is to write the clipping yourself"),
}


# ---- 12.4 power law
def fit_ref(N, L):
    slope, intercept = np.polyfit(np.log(N), np.log(L), 1)
    return float(np.exp(intercept)), float(-slope)


def fit_by_hand(N, L):  # the normal equations, in plain Python
    xs, ys = [math.log(n) for n in N], [math.log(v) for v in L]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return math.exp(my - slope * mx), -slope


def fit_sign(N, L):
    a, b = fit_ref(N, L)
    return a, -b


def fit_log10_mixup(N, L):
    slope, intercept = np.polyfit(np.log10(N), np.log10(L), 1)
    return float(np.exp(intercept)), float(-slope)


def fit_two_points(N, L):
    b = -math.log(L[-1] / L[0]) / math.log(N[-1] / N[0])
    return L[0] * N[0] ** b, b


def fit_linear_space(N, L):
    slope, intercept = np.polyfit(np.asarray(N, float), np.asarray(L, float), 1)
    return float(intercept), float(-slope)


def fit_swapped(N, L):
    a, b = fit_ref(N, L)
    return b, a


def fit_no_exp(N, L):
    slope, intercept = np.polyfit(np.log(N), np.log(L), 1)
    return float(intercept), float(-slope)


def fit_log_L_only(N, L):
    slope, intercept = np.polyfit(np.asarray(N, float), np.log(L), 1)
    return float(np.exp(intercept)), float(-slope)


FIT_MUTANTS = {
    "sign": (fit_sign, r"wrong sign"),
    "log10_mixup": (fit_log10_mixup, r"log10"),
    "two_points": (fit_two_points, r"first and last points"),
    "linear_space": (fit_linear_space, r"log-log space"),
    "swapped_pair": (fit_swapped, r"order \(a, b\)"),
    "intercept_not_exponentiated": (fit_no_exp, r"exp\(intercept\)"),
    "log_of_L_only": (fit_log_L_only, r"log of L but not of N"),
}


# ---- 12.5 Newton-Schulz
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


def ns_right_side(G, steps):  # X^T X on the right: the same iteration
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G / G.norm()
    for _ in range(steps):
        A = X.T @ X
        X = a * X + X @ (b * A + c * A @ A)
    return X


def ns_svd(G, steps):
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    return U @ Vh


def ns_polynomial_on_svd(G, steps):  # the right numbers, by the SVD the iteration exists to avoid
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    s = S / G.norm()
    for _ in range(steps):
        s = 3.4445 * s - 4.7750 * s**3 + 2.0315 * s**5
    return U @ torch.diag(s) @ Vh


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


def ns_gram_on_the_wrong_side(G, steps):  # X^T X multiplying from the left
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G / G.norm()
    for _ in range(steps):
        A = X.T @ X
        X = a * X + (b * A + c * A @ A) @ X
    return X


def ns_transposes_without_undoing(G, steps):
    X = ns_ref(G.T if G.size(0) > G.size(1) else G, steps)
    return X


def ns_spectral_normalisation(G, steps):  # divides by the largest singular value instead
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G / torch.linalg.matrix_norm(G, ord=2)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X


def ns_elementwise_square(G, steps):
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G / G.norm()
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A * A) @ X
    return X


def ns_cubic(G, steps):  # the classic cubic iteration instead of the quintic
    X = G / G.norm()
    for _ in range(steps):
        X = 1.5 * X - 0.5 * X @ X.T @ X
    return X


def ns_in_place(G, steps):
    G /= G.norm()
    return ns_ref(G, steps)


NS_MUTANTS = {
    "exact_svd": (ns_svd, r"torch.linalg.svd.*matrix products only"),
    "polynomial_on_svd": (ns_polynomial_on_svd, r"matrix products only"),
    "unnormalised": (ns_ref_unnormalised, r"Frobenius norm"),
    "one_step_short": (ns_one_step_short, r"iteration\(s\) where steps="),
    "swapped_coefficients": (ns_swapped_coefficients, r"singular values are wrong.*coefficients"),
    "gram_on_the_wrong_side": (ns_gram_on_the_wrong_side, r"A must be X X\^T"),
    "transposed_tall_not_back": (ns_transposes_without_undoing, r"transpose the result back"),
    "spectral_normalisation": (ns_spectral_normalisation, r"largest singular value"),
    "elementwise_square": (ns_elementwise_square, r"A @ A|matrix products"),
    "cubic_iteration": (ns_cubic, r"singular values are wrong"),
    "modifies_G_in_place": (ns_in_place, r"in place"),
    "bfloat16": (lambda G, steps: ns_ref(G.bfloat16(), steps), r"dtype"),
}


CASES = [
    (check_warmup_cosine, lr_ref, LR_MUTANTS),
    (check_accumulate_gradients, accum_ref, ACCUM_MUTANTS),
    (check_clip_grad_norm, clip_ref, CLIP_MUTANTS),
    (check_power_law_fit, fit_ref, FIT_MUTANTS),
    (check_newton_schulz, ns_ref, NS_MUTANTS),
]


def test_other_correct_answers_pass():
    for check, answer in [(check_warmup_cosine, lr_hand), (check_accumulate_gradients, accum_split_by_size_right),
                          (check_power_law_fit, fit_by_hand),
                          (check_newton_schulz, ns_library), (check_newton_schulz, ns_right_side)]:
        assert check(answer).passed, answer.__name__


test_reference_passes, test_mutant_fails, test_stub_not_done = checker_tests(CASES)
