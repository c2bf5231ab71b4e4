"""Checkers for notebook 12 (training at scale).

References are independent of the student's code: the warmup-cosine schedule written out from its
formula with ``math.cos``, full-batch gradients from one backward pass, ``torch.nn.utils.clip_grad_norm_``,
power laws with known exponents, and Newton-Schulz iterations computed on the singular values of an SVD.
Each checker also computes what the common mistakes would give, so a wrong answer is told which one it made.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
import torch.nn as nn

from ._core import ExerciseFailed, checker, expect, forbid

__all__ = ["check_warmup_cosine", "check_accumulate_gradients", "check_clip_grad_norm", "check_power_law_fit",
           "check_newton_schulz"]


# ------------------------------------------------------------------ 12.1 warmup + cosine


def _cosine(step, max_lr, min_lr, warmup, total, *, floor=None, span=None, shape="cosine"):
    span = (total - warmup) if span is None else span
    progress = (step - warmup) / span
    if shape == "linear":
        return max_lr - progress * (max_lr - min_lr)
    if shape == "no-pi":
        return min_lr + 0.5 * (1 + math.cos(progress)) * (max_lr - min_lr)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def _reference_lr(step: int, max_lr: float, min_lr: float, warmup: int, total: int) -> float:
    if step < warmup:
        return max_lr * (step + 1) / (warmup + 1)
    if step >= total:
        return min_lr
    return _cosine(step, max_lr, min_lr, warmup, total)


def _variant(warm=None, decay=None, after=None):
    """A schedule equal to the reference except in the parts given (each a function of the same arguments)."""

    def lr(step, max_lr, min_lr, warmup, total):
        if step < warmup:
            return (warm or _reference_lr)(step, max_lr, min_lr, warmup, total)
        if step >= total:
            return (after or _reference_lr)(step, max_lr, min_lr, warmup, total)
        return (decay or _reference_lr)(step, max_lr, min_lr, warmup, total)

    return lr


# (part of the schedule it concerns, wrong schedule, message). The message names the mistake.
_LR_MISTAKES = [
    ("warmup", _variant(warm=lambda s, hi, lo, w, t: hi * s / w),
     "your warmup starts at 0: step 0 must already learn, the rate is max_lr * (step + 1) / (warmup + 1), "
     "not max_lr * step / warmup"),
    ("warmup", _variant(warm=lambda s, hi, lo, w, t: hi * (s + 1) / w),
     "your warmup reaches max_lr one step early (at step warmup - 1): divide by warmup + 1, "
     "max_lr * (step + 1) / (warmup + 1)"),
    ("warmup", _variant(warm=lambda s, hi, lo, w, t: lo + (hi - lo) * (s + 1) / (w + 1)),
     "the warmup rises from 0 towards max_lr, max_lr * (step + 1) / (warmup + 1); you ramped up from min_lr"),
    ("decay", _variant(decay=lambda s, hi, lo, w, t: _cosine(s, hi, 0.0, w, t)),
     "your cosine decays towards 0 instead of min_lr: min_lr + 0.5 (1 + cos(pi progress)) (max_lr - min_lr)"),
    ("decay", _variant(decay=lambda s, hi, lo, w, t: _cosine(s + w, hi, lo, w, t)),
     "your decay ignores the warmup: progress is (step - warmup) / (total - warmup), so the cosine "
     "starts at max_lr exactly when the warmup ends"),
    ("decay", _variant(decay=lambda s, hi, lo, w, t: _cosine(s, hi, lo, w, t, span=t)),
     "progress must run from 0 at the end of the warmup to 1 at step total: divide by (total - warmup), not total"),
    ("decay", _variant(decay=lambda s, hi, lo, w, t: _cosine(s, hi, lo, w, t, span=t - w - 1)),
     "your decay reaches min_lr one step early (at total - 1): progress = (step - warmup) / (total - warmup)"),
    ("decay", _variant(decay=lambda s, hi, lo, w, t: _cosine(s, hi, lo, w, t, shape="linear")),
     "that is a linear decay; the task is the cosine: min_lr + 0.5 (1 + cos(pi progress)) (max_lr - min_lr)"),
    ("decay", _variant(decay=lambda s, hi, lo, w, t: _cosine(s, hi, lo, w, t, shape="no-pi")),
     "the cosine's argument is pi * progress (from 0 to pi); without pi it stops a third of the way down"),
    ("after", _variant(after=lambda s, hi, lo, w, t: _cosine(s, hi, lo, w, t)),
     "after step total the rate must stay at min_lr; your cosine keeps going and the rate climbs back up"),
    ("after", _variant(after=lambda s, hi, lo, w, t: 0.0),
     "after step total the rate stays at min_lr, not 0"),
]


@checker("12.1 warmup + cosine schedule")
def check_warmup_cosine(fn) -> None:
    """fn(step, max_lr, min_lr, warmup, total) -> float."""
    configs = [(1e-3, 1e-4, 10, 100), (6e-4, 0.0, 0, 50), (3e-3, 3e-4, 25, 60), (1.0, 0.25, 3, 11)]
    for max_lr, min_lr, warmup, total in configs:
        args = (max_lr, min_lr, warmup, total)
        steps = sorted(set(range(0, total + 20)))
        got = {s: fn(s, *args) for s in steps}
        for s, v in got.items():
            expect(isinstance(v, numbers.Real) or (isinstance(v, torch.Tensor) and v.numel() == 1),
                   f"return the learning rate as a number, got {type(v).__name__} at step {s}")
        got = {s: float(v) for s, v in got.items()}
        want = {s: _reference_lr(s, *args) for s in steps}
        wrong = [s for s in steps if not math.isclose(got[s], want[s], rel_tol=1e-6, abs_tol=1e-12)]
        if not wrong:
            continue
        part_of = {s: "warmup" if s < warmup else "after" if s >= total else "decay" for s in wrong}
        for part, mistake, message in _LR_MISTAKES:
            in_part = [s for s in wrong if part_of[s] == part]
            if in_part and all(math.isclose(got[s], mistake(s, *args), rel_tol=1e-6, abs_tol=1e-12) for s in in_part):
                expect(False, f"{message} (max_lr={max_lr}, min_lr={min_lr}, warmup={warmup}, total={total})")
        s = wrong[0]
        if s < warmup:
            expect(False, f"step {s} is inside the warmup ({warmup} steps): expected {want[s]:.4g} = "
                          f"max_lr * (step + 1) / (warmup + 1), got {got[s]:.4g}")
        if s >= total:
            expect(False, f"after the decay (step {s} >= total {total}) the rate stays at min_lr = {min_lr}, "
                          f"got {got[s]:.4g}")
        if s == warmup:
            expect(False, f"the decay starts at the peak: step {warmup} should give max_lr = {max_lr}, "
                          f"got {got[s]:.4g}")
        expect(False, f"step {s}: cosine decay should give {want[s]:.4g} (min_lr + 0.5 (1 + cos(pi * progress)) "
                      f"(max_lr - min_lr), progress = (step - warmup) / (total - warmup)), got {got[s]:.4g}")


# ------------------------------------------------------------------ 12.2 gradient accumulation


def _toy_model(seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def _grads_of(seed, pieces, scale, *, zero_between=False):
    """Gradients left by backward on each (x, y) piece with its mean loss times `scale`."""
    model = _toy_model(seed)
    for xb, yb in pieces:
        if zero_between:
            model.zero_grad()
        (nn.functional.cross_entropy(model(xb), yb) * scale).backward()
    return [p.grad for p in model.parameters()]


def _same(grads, ref, atol=1e-6):
    return all(g is not None and torch.allclose(g, r, atol=atol) for g, r in zip(grads, ref))


@checker("12.2 gradient accumulation")
def check_accumulate_gradients(fn) -> None:
    """fn(model, x, y, n_micro) leaves in p.grad the gradient of the mean loss over the whole batch."""
    for seed, batch, n_micro in [(0, 12, 4), (1, 12, 3), (2, 12, 2), (3, 6, 1)]:
        g = torch.Generator().manual_seed(seed + 100)
        x = torch.randn(batch, 6, generator=g)
        y = torch.randint(0, 3, (batch,), generator=g)
        ref = _grads_of(seed, [(x, y)], 1.0)  # the big-batch gradient in one pass
        student = _toy_model(seed)
        before = [p.detach().clone() for p in student.parameters()]
        rows, backwards = [], []
        student.register_forward_pre_hook(lambda m, inp, rows=rows: rows.append(inp[0].shape[0]))
        first = next(student.parameters())
        first.register_hook(lambda grad, backwards=backwards: backwards.append(1))
        fn(student, x.clone(), y.clone(), n_micro)
        got = [p.grad for p in student.parameters()]
        size = batch // n_micro
        expect(all(torch.equal(p.detach(), b) for p, b in zip(student.parameters(), before)),
               "your function changed the weights: accumulation only fills p.grad, the optimizer steps once "
               "afterwards (do not call an optimizer or update p inside it)")
        for i, (name, _) in enumerate(student.named_parameters()):
            expect(got[i] is not None, f"parameter {name} has no gradient: call loss.backward() for each micro-batch")
        if n_micro > 1 and rows == [batch] and _same(got, ref):
            expect(False, f"you ran the whole batch of {batch} through the model at once: the task is {n_micro} "
                          f"forward and backward passes of {size} examples each (that is what saves memory)")
        if _same(got, ref):
            if n_micro > 1 and len(backwards) == 1:
                expect(False, "you summed the micro-batch losses and called backward() once: that keeps all "
                              f"{n_micro} graphs in memory together, which is what accumulation avoids; call "
                              "(loss / n_micro).backward() on each micro-batch")
            expect(sorted(rows) == [size] * n_micro or n_micro == 1,
                   f"split the batch into {n_micro} micro-batches of {size}; the model saw batches of {rows}")
            continue
        pieces = list(zip(x.chunk(n_micro), y.chunk(n_micro)))
        if n_micro > 1:
            # torch.split(x, n_micro) cuts pieces of SIZE n_micro, not n_micro pieces
            by_size = list(zip(torch.split(x, n_micro), torch.split(y, n_micro)))
            if len(by_size) != n_micro and _same(got, _grads_of(seed, by_size, 1.0 / n_micro)):
                expect(False, f"torch.split(x, {n_micro}) cuts pieces of SIZE {n_micro} ({len(by_size)} pieces of a "
                              f"batch of {batch}), not {n_micro} pieces: use x.chunk(n_micro), or "
                              "torch.split(x, len(x) // n_micro)")
            expect(not _same(got, _grads_of(seed, pieces, 1.0)),
                   f"the gradients are {n_micro}x too large: divide each micro-batch loss by n_micro, so the sum "
                   "of the micro-batch gradients is the mean over the whole batch")
            expect(not _same(got, _grads_of(seed, pieces, 1.0 / n_micro, zero_between=True)),
                   "only the last micro-batch's gradient is left: you zeroed the gradients between micro-batches; "
                   "backward() adds into p.grad, so zero once before the loop (they start at zero here) and never "
                   "inside it")
            expect(not _same(got, _grads_of(seed, pieces, 1.0, zero_between=True)),
                   "only the last micro-batch's gradient is left (and not divided by n_micro): do not zero the "
                   "gradients inside the loop, and divide each micro-batch loss by n_micro")
            first_only = [_grads_of(seed, pieces[:1], k) for k in (1.0, 1.0 / n_micro)]
            expect(not any(_same(got, f) for f in first_only),
                   "your gradient is the first micro-batch's only: loop over all n_micro micro-batches")
            expect(not _same(got, _grads_of(seed, pieces, 1.0 / batch)),
                   f"you divided each micro-batch loss by the batch size {batch}; the loss is already a mean over "
                   "its micro-batch, so divide by the number of micro-batches n_micro")
        ratios = [(a * b).sum() / (b * b).sum() for a, b in zip(got, ref)]
        c = float(ratios[0])
        if all(torch.allclose(a, c * b, atol=1e-6) for a, b in zip(got, ref)):
            expect(False, f"your gradients are {c:.3g} times the big-batch gradient: every micro-batch loss is a "
                          "mean over its examples; divide it by n_micro (and nothing else) before backward()")
        diff = max(float((a - b).abs().max()) for a, b in zip(got, ref))
        expect(False, f"batch {batch}, n_micro={n_micro}: the gradients differ from the big-batch gradient (max diff "
                      f"{diff:.2e}). Use every example exactly once, with nn.CrossEntropyLoss() on each micro-batch "
                      "divided by n_micro")


# ------------------------------------------------------------------ 12.3 clip the gradient norm


def _params(grads, g):
    """Parameters with random (non-zero) weights and the given gradients; None for a frozen one."""
    params = []
    for t in grads:
        p = nn.Parameter(torch.randn(t.shape if t is not None else (3,), generator=g, dtype=torch.float64))
        p.grad = None if t is None else t.clone()
        params.append(p)
    return params


def _clipped(grads, max_norm, *, eps=1e-6, per_tensor=False):
    live = [t for t in grads if t is not None]
    total = torch.sqrt(sum((t**2).sum() for t in live)) if live else torch.tensor(0.0)
    out = []
    for t in grads:
        if t is None:
            out.append(None)
            continue
        denom = float(t.norm() if per_tensor else total) + eps
        out.append(t * (min(1.0, max_norm / denom) if denom > 0 else 1.0))
    return out


_WRITE_IT = "the exercise is to write the clipping yourself (torch's function is the checker's reference)"
_TORCH_CLIP = {f"torch.nn.utils.{name}": _WRITE_IT
               for name in ("clip_grad_norm_", "clip_grad_norm", "get_total_norm", "clip_grads_with_norm_")
               if hasattr(torch.nn.utils, name)}


@checker("12.3 clip the global gradient norm")
def check_clip_grad_norm(fn) -> None:
    """fn(params, max_norm) scales every .grad in place so the global norm is <= max_norm; returns the norm before."""
    g = torch.Generator().manual_seed(0)
    d = torch.float64

    def grads(scale):
        return [torch.randn(4, 5, generator=g, dtype=d) * scale, torch.randn(7, generator=g, dtype=d) * scale * 3,
                torch.randn(2, 3, generator=g, dtype=d) * scale / 2]

    # (gradients, max_norm, how the parameters are handed over, what the case is about)
    cases = [
        (grads(3.0), 1.0, "list", "norm above max_norm"),
        (grads(0.01), 0.5, "list", "norm below max_norm"),
        (grads(10.0), 2.0, "generator", "model.parameters() is a generator"),
        (grads(1e-4), 1e-4, "list", "a small norm, where the 1e-6 matters"),
        ([torch.zeros(3, 2, dtype=d), torch.zeros(4, dtype=d)], 1.0, "list", "all-zero gradients"),
        ([grads(2.0)[0], None, grads(2.0)[1]], 1.0, "generator", "a frozen parameter (grad None)"),
    ]
    for grad_list, max_norm, how, what in cases:
        live = [t for t in grad_list if t is not None]
        params = _params(grad_list, g)
        weights = [p.detach().clone() for p in params]
        ref = [nn.Parameter(w.clone()) for w in weights]
        for q, t in zip(ref, grad_list):
            q.grad = None if t is None else t.clone()
        want_total = float(torch.nn.utils.clip_grad_norm_(ref, max_norm))
        handed = iter(params) if how == "generator" else list(params)
        try:
            with forbid(_TORCH_CLIP):
                total = fn(handed, max_norm)
        except (TypeError, AttributeError) as e:
            if "NoneType" in str(e) and None in grad_list:
                raise ExerciseFailed("a parameter whose .grad is None (frozen, or not used in the loss) must be "
                                     "skipped, as torch.nn.utils.clip_grad_norm_ does: `if p.grad is not None`") from e
            raise
        except ZeroDivisionError as e:
            raise ExerciseFailed("with all-zero gradients the norm is 0: divide by (total_norm + 1e-6), as torch "
                                 "does, so the factor stays finite (and clipping leaves zeros alone)") from e
        expect(all(torch.equal(p.detach(), w) for p, w in zip(params, weights)),
               "your function changed the weights: clipping only rescales p.grad")
        got = [p.grad for p in params]
        want = [q.grad for q in ref]
        # --- the returned norm
        expect(total is not None, "return the global norm before clipping (you returned None)")
        try:
            total_f = float(total)
        except (TypeError, ValueError):
            raise ExerciseFailed("return the global norm as a number or a 0-d tensor, "
                                 f"got {type(total).__name__}") from None
        squares = sum(float((t**2).sum()) for t in live)
        if not math.isclose(total_f, want_total, rel_tol=1e-5, abs_tol=1e-12):
            if math.isclose(total_f, squares, rel_tol=1e-5) and squares > 0:
                expect(False, "you returned the sum of the squared gradients; the norm is its square root")
            if live and math.isclose(total_f, sum(float(t.norm()) for t in live), rel_tol=1e-5):
                expect(False, "the global norm is sqrt(sum of ALL squared entries), i.e. sqrt of the sum of the "
                              "squared per-tensor norms, not the sum of the per-tensor norms")
            after = math.sqrt(sum(float((q**2).sum()) for q in want if q is not None))
            if math.isclose(total_f, after, rel_tol=1e-5) and not math.isclose(after, want_total, rel_tol=1e-5):
                expect(False, f"you returned the norm AFTER clipping ({total_f:.4g}); return the norm before "
                              f"clipping ({want_total:.4g}), which is what the training loop logs")
            if math.isclose(total_f, math.sqrt(sum(float((w**2).sum()) for w in weights)), rel_tol=1e-5):
                expect(False, "you measured the norm of the weights (p or p.data); clipping is about the "
                              "gradients p.grad")
            if math.isclose(total_f, float(max_norm), rel_tol=1e-6):
                expect(False, "return the norm before clipping, not max_norm")
            expect(False, f"return the global norm BEFORE clipping, sqrt(sum of all squared gradient entries) = "
                          f"{want_total:.4g}; got {total_f:.4g} ({what})")
        # --- the gradients after the call
        if all(a is None and b is None or torch.allclose(a, b, rtol=1e-9, atol=1e-15) for a, b in zip(got, want)):
            continue
        unchanged = all(a is None or torch.equal(a, t) for a, t in zip(got, grad_list))
        if unchanged and how == "generator":
            expect(False, "called with model.parameters() (a generator, as torch's clip_grad_norm_ is), your "
                          "function clipped nothing: the first loop over `params` used the generator up, so the "
                          "loop that scales saw no parameters. Materialise it once: params = list(params)")
        if unchanged:
            expect(False, f"the gradients were not changed ({what}, global norm {want_total:.3g} > max_norm "
                          f"{max_norm}): scale p.grad itself in place, p.grad.mul_(factor); `g = g * factor` only "
                          "makes a new tensor")
        if all(a is None or torch.allclose(a, b, rtol=1e-9, atol=1e-15)
               for a, b in zip(got, _clipped(grad_list, max_norm, per_tensor=True))):
            expect(False, "you clipped each tensor by its own norm: use ONE global norm over all gradients and scale "
                          "every gradient by the same factor, so the update keeps its direction")
        if want_total <= max_norm:
            expect(False, f"the norm {want_total:.3g} is already below max_norm={max_norm}: leave the gradients "
                          "alone (clipping only ever scales down: factor = min(1, max_norm / (total + 1e-6)))")
        if all(a is None or torch.allclose(a, b, rtol=1e-9, atol=1e-15)
               for a, b in zip(got, _clipped(grad_list, max_norm, eps=0.0))):
            expect(False, "you divided by total_norm; torch (and the task) divide by (total_norm + 1e-6), which keeps "
                          f"an all-zero gradient finite and shows for small norms like this one ({want_total:.2g})")
        expect(False, f"the gradients are wrong after clipping ({what}): scale ALL gradients by the same factor "
                      "min(1, max_norm / (total_norm + 1e-6))")


# ------------------------------------------------------------------ 12.4 fit a power law


def _line(x, y):
    slope, intercept = np.polyfit(np.asarray(x, dtype=float), np.asarray(y, dtype=float), 1)
    return float(slope), float(intercept)


def _fit_mistakes(N, L):
    """(a, b) that common wrong fits give, with the message naming each."""
    N, L = np.asarray(N, dtype=float), np.asarray(L, dtype=float)
    s, i = _line(np.log(N), np.log(L))
    s10, i10 = _line(np.log10(N), np.log10(L))
    out = [
        ((math.exp(i), s),
         "b has the wrong sign: with L = a * N**(-b) a loss that falls with N has b > 0, so b = -slope"),
        ((-s, math.exp(i)), "you returned (b, a); return the pair in the order (a, b)"),
        ((i, -s), "a is exp(intercept): the intercept of the line through (log N, log L) is log a"),
        ((math.exp(i10), -s10), "you fitted in log10 but undid it with exp: with log10 use a = 10 ** intercept "
                                "(or use the natural log throughout)"),
        ((L[0] * N[0] ** (-math.log(L[-1] / L[0]) / math.log(N[-1] / N[0])),
          -math.log(L[-1] / L[0]) / math.log(N[-1] / N[0])),
         "you used only the first and last points; fit all points by least squares"),
    ]
    sl, il = _line(N, L)
    out.append(((il, -sl), "that is a straight line through (N, L) in linear space; a power law is a straight line "
                           "in log-log space: fit (log N, log L)"))
    ss, isl = _line(N, np.log(L))
    out.append(((math.exp(isl), -ss), "you took the log of L but not of N: fit (log N, log L)"))
    sn, inn = _line(np.log(N), L)
    out.append(((inn, -sn), "you took the log of N but not of L: fit (log N, log L)"))
    return out


@checker("12.4 fit a power law")
def check_power_law_fit(fn) -> None:
    """fn(N, L) -> (a, b) with L ~ a * N ** (-b), fitted by least squares in log-log space."""
    g = torch.Generator().manual_seed(0)
    cases = []
    for a, b in [(12.0, 0.08), (3.5, 0.3), (40.0, 0.05)]:
        N = torch.logspace(3, 7, 6, dtype=torch.float64)
        cases.append((N.tolist(), (a * N ** (-b)).tolist(), "an exact power law"))
    # noisy points: the answer must be the least-squares line in log space (what np.polyfit gives)
    for k, n in enumerate([8, 5]):
        N = torch.logspace(3, 6, n, dtype=torch.float64)
        L = (5.0 + k) * N ** (-0.1 - 0.05 * k) * torch.exp(0.05 * torch.randn(n, generator=g, dtype=torch.float64))
        as_array = k == 1  # the notebook passes numpy arrays
        cases.append((N.numpy() if as_array else N.tolist(), L.numpy() if as_array else L.tolist(), "noisy points"))
    for N, L, what in cases:
        s, i = _line(np.log(np.asarray(N)), np.log(np.asarray(L)))
        want_a, want_b = math.exp(i), -s
        got = fn(N.copy() if isinstance(N, np.ndarray) else list(N), L.copy() if isinstance(L, np.ndarray) else list(L))
        expect(isinstance(got, tuple | list) and len(got) == 2, f"return a pair (a, b), got {got!r}")
        ga, gb = float(got[0]), float(got[1])
        if math.isclose(ga, want_a, rel_tol=1e-4) and math.isclose(gb, want_b, rel_tol=1e-4, abs_tol=1e-9):
            continue
        for (ma, mb), message in _fit_mistakes(N, L):
            if math.isclose(ga, ma, rel_tol=1e-4, abs_tol=1e-9) and math.isclose(gb, mb, rel_tol=1e-4, abs_tol=1e-9):
                expect(False, f"{message} ({what}: expected a={want_a:.4g}, b={want_b:.4g})")
        if not math.isclose(gb, want_b, rel_tol=1e-4):
            expect(False, f"exponent b on {what}: expected {want_b:.4g}, got {gb:.4g}. Fit a straight line to "
                          "(log N, log L) by ordinary least squares (np.polyfit(..., 1)): its slope is -b")
        expect(False, f"prefactor a on {what}: expected {want_a:.4g}, got {ga:.4g}. The intercept of the line is "
                      "log a, so a = exp(intercept) (same log base as the fit)")


# ------------------------------------------------------------------ 12.5 Newton-Schulz orthogonalisation

_NS = (3.4445, -4.7750, 2.0315)


def _ns_by_svd(G: torch.Tensor, steps: int, coeffs=_NS, normalise: str | None = "fro") -> torch.Tensor:
    """What `steps` quintic Newton-Schulz iterations do, computed on the singular values: U p(...p(s)) V^T."""
    a, b, c = coeffs
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    s = {"fro": S / G.norm(), "spectral": S / S[0], "max": S / G.abs().max(), None: S}[normalise]
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return U @ torch.diag(s) @ Vh


def _ns_gram_right(G: torch.Tensor, steps: int) -> torch.Tensor:
    """The iteration with A = X^T X put on the left (only defined for square G)."""
    a, b, c = _NS
    X = G / G.norm()
    for _ in range(steps):
        A = X.T @ X
        X = a * X + (b * A + c * A @ A) @ X
    return X


_SVD_MSG = ("the exercise is the Newton-Schulz iteration, matrix products only: an SVD is exactly what Muon avoids "
            "(the checker uses one as its reference)")
_NO_SVD = {name: _SVD_MSG for name in ("torch.linalg.svd", "torch.svd", "torch.Tensor.svd", "torch.linalg.svdvals")}


@checker("12.5 Newton-Schulz orthogonalisation")
def check_newton_schulz(fn) -> None:
    """fn(G, steps) -> X: `steps` quintic Newton-Schulz iterations on G / ||G||_F, the same shape as G."""
    g = torch.Generator().manual_seed(0)
    for shape, steps in [((8, 8), 3), ((6, 10), 5), ((10, 6), 5), ((5, 12), 1)]:
        G = torch.randn(shape, generator=g, dtype=torch.float64) * 2.0
        G_in = G.clone()
        with forbid(_NO_SVD):
            X = fn(G_in, steps)
        expect(isinstance(X, torch.Tensor), f"return a tensor, got {type(X).__name__}")
        if tuple(X.shape) == shape[::-1] and shape[0] != shape[1]:
            expect(False, f"for G of shape {shape} you returned shape {tuple(X.shape)}: if you transpose a tall "
                          "matrix to iterate on its short side, transpose the result back")
        expect(tuple(X.shape) == shape,
               f"for G of shape {shape} return a tensor of the same shape, got {tuple(X.shape)}")
        expect(torch.equal(G_in, G), "do not modify G in place: work on X = G / G.norm()")
        X = X.to(torch.float64)
        want = _ns_by_svd(G, steps)
        if torch.allclose(X, want, atol=1e-6, rtol=1e-5):
            continue
        U, _, Vh = torch.linalg.svd(G, full_matrices=False)
        if torch.allclose(X, U @ Vh, atol=1e-6):
            expect(False, "that is the exact polar factor U V^T from an SVD; the exercise is the Newton-Schulz "
                          "iteration, whose singular values land near 1 (about 0.7-1.2), not exactly on it")
        if not torch.isfinite(X).all() or torch.allclose(X, _ns_by_svd(G, steps, normalise=None), atol=1e-6):
            expect(False, "divide G by its Frobenius norm G.norm() first: the iteration only maps singular values "
                          "in (0, 1] towards 1, larger ones blow up")
        for norm, name in [("spectral", "its largest singular value"), ("max", "its largest entry")]:
            if torch.allclose(X, _ns_by_svd(G, steps, normalise=norm), atol=1e-6, rtol=1e-5):
                expect(False, f"you divided G by {name}; the task divides by the Frobenius norm G.norm()")
        for k in range(0, 8):
            if k != steps and torch.allclose(X, _ns_by_svd(G, k), atol=1e-6, rtol=1e-5):
                expect(False, f"you ran {k} iteration(s) where steps={steps} were asked for")
        if shape[0] == shape[1] and torch.allclose(X, _ns_gram_right(G, steps), atol=1e-6, rtol=1e-5):
            expect(False, "A must be X X^T when it multiplies X from the left, (b A + c A^2) X; X^T X only works "
                          "on the right, X (b A + c A^2). With X^T X on the left, non-square G does not even fit")
        rel = float((X - want).norm() / want.norm())
        if rel < 0.05:
            expect(False, f"close, but not exact (relative difference {rel:.1e}): compute in G's own dtype "
                          f"({G.dtype}); Muon runs the iteration in bfloat16 for speed, the exercise does not")
        D = U.T @ X @ Vh.T  # X in G's singular basis: diagonal if the student applied some odd polynomial
        scale = float(X.norm()) + 1e-12
        off = float((D - torch.diag(torch.diagonal(D))).norm()) + float((X - U @ D.diagonal().diag() @ Vh).norm())
        if off < 1e-6 * scale:
            expect(False, f"your X keeps G's singular vectors but its singular values are wrong ({steps} steps on a "
                          f"{shape} matrix): each step must map s -> a s + b s^3 + c s^5 with (a, b, c) = "
                          "(3.4445, -4.7750, 2.0315); check the coefficients and that A A is A^2 (A @ A, not A * A)")
        expect(False, f"G of shape {shape}, {steps} steps: the result differs from the iteration "
                      "X <- a X + (b A + c A A) X with A = X X^T and (a, b, c) = (3.4445, -4.7750, 2.0315) "
                      f"(max difference {(X - want).abs().max():.2e}); it no longer has G's singular vectors: "
                      "check that A = X X^T (matrix products, @) multiplies X from the left")
