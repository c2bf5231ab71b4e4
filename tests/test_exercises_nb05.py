"""Notebook 05 checkers: the reference solution passes, plausible mistakes fail, a stub is "not done"."""

import math

import pytest
import torch

from minigpt.data import make_toy_task
from minigpt.exercises import ExerciseFailed
from minigpt.exercises.nb05 import (
    check_copy_task,
    check_early_stopping,
    check_lr_schedule,
    check_sequence_accuracy,
    check_sort_model,
    check_sort_task,
)
from minigpt.schedule import lr_at


def stub(*args, **kwargs):
    raise NotImplementedError("HINT")


class StubEarlyStopping:
    def __init__(self, patience, min_delta=0.0):
        raise NotImplementedError("HINT")


def assert_fails(check, answer, *fragments, **kwargs):
    with pytest.raises(ExerciseFailed) as info:
        check(answer, **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "check, answer",
    [(check_copy_task, stub), (check_sort_task, stub), (check_sequence_accuracy, stub), (check_lr_schedule, stub),
     (check_early_stopping, StubEarlyStopping)],
)
def test_stub_is_not_done(check, answer):
    assert check(answer).status == "not done"


def test_sort_model_stub_is_not_done():
    assert check_sort_model(stub, length=4, vocab_size=8).status == "not done"


# ---------------------------------------------------------------------------- 05.1 / 05.2 data


def task_batch(kind, sort_dim=1, descending=False, shift=True, low=3, high_offset=0):
    def make(n, length, vocab_size, generator):
        src = torch.randint(low, vocab_size - high_offset, (n, length), generator=generator)
        tgt = src.clone() if kind == "copy" else src.sort(dim=sort_dim, descending=descending).values
        bos = torch.full((n, 1), 1, dtype=torch.long)
        tgt_in = torch.cat([bos, tgt[:, :-1]], dim=1) if shift else tgt.clone()
        return src, tgt_in, tgt
    return make


def test_task_references_pass_and_agree_with_library():
    assert check_copy_task(task_batch("copy")).passed
    assert check_sort_task(task_batch("sort")).passed
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    ours = task_batch("sort")(5, 4, 9, g1)
    lib = make_toy_task("sort", 5, 4, 9, generator=g2)
    for a, b in zip(ours, (lib.src, lib.tgt_in, lib.tgt_out)):
        assert torch.equal(a, b)


def test_task_mutants_fail():
    assert_fails(check_copy_task, task_batch("copy", shift=False), "Shift right")
    assert_fails(check_copy_task, task_batch("copy", low=0), "special token")
    assert_fails(check_copy_task, task_batch("copy", high_offset=1), "exclusive")
    assert_fails(check_sort_task, task_batch("sort", descending=True), "DESCENDING")
    assert_fails(check_sort_task, task_batch("sort", sort_dim=0), "dim 0")
    assert_fails(check_sort_task, task_batch("copy"), "copy of src")

    def reseeding(n, length, vocab_size, generator):
        return task_batch("copy")(n, length, vocab_size, torch.Generator().manual_seed(0))

    assert_fails(check_copy_task, reseeding, "same batch")


# ---------------------------------------------------------------------------- 05.3 accuracy


def test_sequence_accuracy_reference_and_mutants():
    assert check_sequence_accuracy(lambda p, t: (p == t).all(dim=1).float().mean().item()).passed
    assert_fails(check_sequence_accuracy, lambda p, t: (p == t).float().mean().item(), "TOKEN")
    assert_fails(check_sequence_accuracy, lambda p, t: (p == t).any(dim=1).float().mean().item(), "ANY")
    assert_fails(check_sequence_accuracy, lambda p, t: (p == t).all(dim=1).sum().item(), "fraction")


# ---------------------------------------------------------------------------- 05.4 schedule


def my_lr(step, lr, min_lr, warmup, decay):
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if step >= decay:
        return min_lr
    ratio = (step - warmup) / (decay - warmup)
    return min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (lr - min_lr)


def test_lr_reference_passes_and_is_the_library_formula():
    assert check_lr_schedule(my_lr).passed
    for step in (0, 5, 10, 50, 99, 100, 200):
        assert my_lr(step, 1e-3, 1e-4, 10, 100) == pytest.approx(
            lr_at(step, lr=1e-3, min_lr=1e-4, warmup_iters=10, decay_iters=100))


def test_lr_mutants_fail():
    def warmup_from_zero(step, lr, min_lr, w, d):
        return lr * step / w if step < w else my_lr(step, lr, min_lr, w, d)

    def to_zero(step, lr, min_lr, w, d):
        return my_lr(step, lr, 0.0, w, d) if step < d else min_lr

    def full_period(step, lr, min_lr, w, d):
        if w <= step < d:
            return min_lr + 0.5 * (1 + math.cos(2 * math.pi * (step - w) / (d - w))) * (lr - min_lr)
        return my_lr(step, lr, min_lr, w, d)

    def no_floor(step, lr, min_lr, w, d):
        return my_lr(min(step, d - 1), lr, min_lr, w, d)

    assert_fails(check_lr_schedule, warmup_from_zero, "learns nothing")
    assert_fails(check_lr_schedule, to_zero, "decays to 0")
    assert_fails(check_lr_schedule, full_period, "HALF period")
    assert_fails(check_lr_schedule, no_floor, "stays at min_lr")


# ---------------------------------------------------------------------------- 05.5 early stopping


class EarlyStopping:
    def __init__(self, patience, min_delta=0.0):
        self.patience, self.min_delta = patience, min_delta
        self.best, self.bad = math.inf, 0

    def step(self, val_loss):
        if val_loss < self.best - self.min_delta:
            self.best, self.bad = val_loss, 0
        else:
            self.bad += 1
        return self.bad >= self.patience


def test_early_stopping_reference_passes():
    assert check_early_stopping(EarlyStopping).passed


def test_early_stopping_mutants_fail():
    class NoReset(EarlyStopping):
        def step(self, v):
            if v < self.best - self.min_delta:
                self.best = v
            else:
                self.bad += 1
            return self.bad >= self.patience

    class VersusLast(EarlyStopping):
        def step(self, v):
            improved = v < self.best - self.min_delta
            self.best = v
            self.bad = 0 if improved else self.bad + 1
            return self.bad >= self.patience

    class OffByOne(EarlyStopping):
        def step(self, v):
            super().step(v)
            return self.bad > self.patience

    class IgnoresDelta(EarlyStopping):
        def step(self, v):
            self.min_delta = 0.0
            return super().step(v)

    for mutant in (NoReset, VersusLast, OffByOne, IgnoresDelta):
        assert_fails(check_early_stopping, mutant, "expected")


# ---------------------------------------------------------------------------- 05.6 trained sorter


class Oracle(torch.nn.Module):
    """Stands in for a trained model: 'decodes' by applying a fixed rule to the source."""

    def __init__(self, rule):
        super().__init__()
        self.rule = rule
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def greedy_decode(self, src, max_len, bos_id):
        return self.rule(src)[:, :max_len]


def test_sort_model_reference_passes_and_mutants_fail():
    assert check_sort_model(lambda: Oracle(lambda s: s.sort(dim=1).values), length=5, vocab_size=9).passed
    assert check_sort_model(Oracle(lambda s: s.sort(dim=1).values), length=5, vocab_size=9).passed
    assert_fails(check_sort_model, lambda: Oracle(lambda s: s.clone()), "copies", length=5, vocab_size=9)
    assert_fails(check_sort_model, lambda: Oracle(lambda s: s.flip(1)), "reverses", length=5, vocab_size=9)

    def mostly(s):  # right on about half the sequences: below the bar
        out = s.sort(dim=1).values
        out[::2, 0] = 0
        return out

    assert_fails(check_sort_model, lambda: Oracle(mostly), "below", length=5, vocab_size=9)
