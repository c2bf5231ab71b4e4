"""Checkers of notebook 05: each passes the reference answer, fails plausible wrong answers, and reports stubs."""

import json
import math
from pathlib import Path

import pytest
import torch
from _exercise_cases import checker_tests, stub  # noqa: F401

from minigpt.data import make_toy_task
from minigpt.exercises import ExerciseFailed
from minigpt.exercises.nb05 import (
    FAST_MIN_ACCURACY,
    check_copy_task,
    check_early_stopping,
    check_lr_schedule,
    check_sequence_accuracy,
    check_sort_model,
    check_sort_task,
)
from minigpt.schedule import lr_at
from minigpt.seq2seq import Transformer, TransformerConfig

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "05_mini_transformer.ipynb"


# ---- 05.1 / 05.2 data
def task_batch(kind, sort_dim=1, descending=False, shift="right", low=3, high_offset=0, bos=1, dtype=torch.long,
               sort_src=False, reseed=False):
    def make(n, length, vocab_size, generator):
        if reseed:
            generator = torch.Generator().manual_seed(0)
        src = torch.randint(low, vocab_size - high_offset, (n, length), generator=generator)
        if sort_src:
            src = src.sort(dim=1).values
        tgt = src.clone() if kind == "copy" else src.sort(dim=sort_dim, descending=descending).values
        col = torch.full((n, 1), bos, dtype=torch.long)
        if shift == "right":
            tgt_in = torch.cat([col, tgt[:, :-1]], dim=1)
        elif shift == "left":
            tgt_in = torch.cat([tgt[:, 1:], torch.zeros_like(col)], dim=1)
        else:
            tgt_in = tgt.clone()
        return src.to(dtype), tgt_in.to(dtype), tgt.to(dtype)

    return make


COPY_MUTANTS = {
    "no shift (tgt_in = tgt_out)": (task_batch("copy", shift=None), r"Shift right"),
    "special tokens in src": (task_batch("copy", low=0), r"special token"),
    "randint upper bound vocab_size - 1": (task_batch("copy", high_offset=1), r"exclusive"),
    "re-seeds inside": (task_batch("copy", reseed=True), r"same batch"),
    "shifted left": (task_batch("copy", shift="left"), r"shifted LEFT"),
    "PAD (0) as start token": (task_batch("copy", bos=0), r"BOS"),
    "int32 tokens": (task_batch("copy", dtype=torch.int32), r"torch.long"),
    "upper bound vocab_size + 1": (task_batch("copy", high_offset=-1), r"must be < vocab_size"),
}

SORT_MUTANTS = {
    "descending": (task_batch("sort", descending=True), r"DESCENDING"),
    "sorted along dim 0": (task_batch("sort", sort_dim=0), r"dim 0"),
    "copy instead of sort": (task_batch("copy"), r"copy of src"),
    "src sorted too": (task_batch("sort", sort_src=True), r"already sorted"),
    "shifted left": (task_batch("sort", shift="left"), r"shifted LEFT"),
    "no shift": (task_batch("sort", shift=None), r"Shift right"),
    "float tokens": (task_batch("sort", dtype=torch.float32), r"torch.long"),
}


# ---- 05.3 accuracy
def seq_acc(p, t):
    return (p == t).all(dim=1).float().mean().item()


ACC_MUTANTS = {
    "token accuracy": (lambda p, t: (p == t).float().mean().item(), r"TOKEN"),
    "any token right": (lambda p, t: (p == t).any(dim=1).float().mean().item(), r"ANY"),
    "count, not fraction": (lambda p, t: (p == t).all(dim=1).sum().item(), r"fraction"),
    "columns (dim 0)": (lambda p, t: (p == t).all(dim=0).float().mean().item(), r"dim=0"),
    "skips the last position": (lambda p, t: (p[:, :-1] == t[:, :-1]).all(dim=1).float().mean().item(),
                                r"last position"),
    "mean of a bool tensor": (lambda p, t: (p == t).all(dim=1).mean().item(), r"\.float\(\)"),
    "mean of per-row token accuracy": (lambda p, t: (p == t).float().mean(dim=1).mean().item(), r"TOKEN"),
}


# ---- 05.4 schedule
def my_lr(step, lr, min_lr, warmup, decay):
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if step >= decay:
        return min_lr
    ratio = (step - warmup) / (decay - warmup)
    return min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (lr - min_lr)


def lr_variant(warmup_rule=None, cosine=None):
    def f(step, lr, min_lr, w, d):
        if step < w and warmup_rule:
            return warmup_rule(step, lr, w)
        if w <= step < d and cosine:
            return cosine(step, lr, min_lr, w, d)
        return my_lr(step, lr, min_lr, w, d)

    return f


LR_MUTANTS = {
    "warmup from zero": (lr_variant(warmup_rule=lambda s, lr, w: lr * s / w), r"learns nothing"),
    "decays to zero": (lambda s, lr, m, w, d: my_lr(s, lr, 0.0, w, d) if s < d else m, r"decays to 0"),
    "full cosine period": (lr_variant(cosine=lambda s, lr, m, w, d: m + 0.5 * (1 + math.cos(2 * math.pi * (s - w)
                                                                                           / (d - w))) * (lr - m)),
                           r"HALF period"),
    "no floor after decay": (lambda s, lr, m, w, d: my_lr(min(s, d - 1), lr, m, w, d), r"stays at min_lr"),
    "warmup divides by warmup_iters": (lr_variant(warmup_rule=lambda s, lr, w: lr * (s + 1) / w), r"off by one"),
    "cosine from step 0": (lr_variant(cosine=lambda s, lr, m, w, d: m + 0.5 * (1 + math.cos(math.pi * s / d))
                                      * (lr - m)), r"starts at step 0"),
    "linear decay": (lr_variant(cosine=lambda s, lr, m, w, d: lr - (s - w) / (d - w) * (lr - m)), r"linear"),
    "no warmup": (lr_variant(warmup_rule=lambda s, lr, w: lr), r"during warmup"),
}


# ---- 05.5 early stopping
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


class EqualCounts(EarlyStopping):
    def step(self, v):
        if v <= self.best - self.min_delta:
            self.best, self.bad = v, 0
        else:
            self.bad += 1
        return self.bad >= self.patience


class DeltaSign(EarlyStopping):
    def step(self, v):
        if v < self.best + self.min_delta:
            self.best, self.bad = min(self.best, v), 0
        else:
            self.bad += 1
        return self.bad >= self.patience


STOP_MUTANTS = {
    "counter never reset": (NoReset, r"never reset"),
    "compares with the last loss": (VersusLast, r"PREVIOUS"),
    "stops one eval late": (OffByOne, r"off by one"),
    "ignores min_delta": (IgnoresDelta, r"ignore min_delta"),
    "equal counts as improvement": (EqualCounts, r"EQUAL"),
    "min_delta with the wrong sign": (DeltaSign, r"wrong sign"),
}


# ---- 05.6 trained sorter
class Oracle(torch.nn.Module):
    """Stands in for a trained model: 'decodes' by applying a fixed rule to the source."""

    def __init__(self, rule):
        super().__init__()
        self.rule = rule
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def greedy_decode(self, src, max_len, bos_id):
        return self.rule(src)[:, :max_len]


def check_sort_model_5_9(train_sorter):
    """05.6 as the notebook calls it, at a small size (length 5, vocabulary 9)."""
    return check_sort_model(train_sorter, length=5, vocab_size=9)


def sorted_on_a_third(s):  # right on a third of the sequences: below the bar in either mode
    out = s.sort(dim=1).values
    keep = torch.arange(len(s)) % 3 == 0
    out[~keep, 0] = 0
    return out


def untrained():
    torch.manual_seed(0)
    return Transformer(TransformerConfig(src_vocab_size=9, tgt_vocab_size=9, d_model=32, n_head=4, d_ff=64,
                                         n_encoder_layers=1, n_decoder_layers=1))


def forgets_return():
    untrained()  # trains ... and returns nothing


SORTER_MUTANTS = {
    "copies": (lambda: Oracle(lambda s: s.clone()), r"copies"),
    "reverses": (lambda: Oracle(lambda s: s.flip(1)), r"reverses"),
    "right on a third": (lambda: Oracle(sorted_on_a_third), r"below"),
    "untrained model": (untrained, r"below"),
    "returns nothing": (forgets_return, r"must return the trained Transformer"),
    "decodes one token short": (lambda: Oracle(lambda s: s.sort(dim=1).values[:, :-1]), r"same length"),
    "sorts descending": (lambda: Oracle(lambda s: s.sort(dim=1, descending=True).values), r"below"),
}

CASES = [
    (check_copy_task, task_batch("copy"), COPY_MUTANTS),
    (check_sort_task, task_batch("sort"), SORT_MUTANTS),
    (check_sequence_accuracy, seq_acc, ACC_MUTANTS),
    (check_lr_schedule, my_lr, LR_MUTANTS),
    (check_early_stopping, EarlyStopping, STOP_MUTANTS),
    (check_sort_model_5_9, lambda: Oracle(lambda s: s.sort(dim=1).values), SORTER_MUTANTS),
]

test_reference_passes, test_mutant_fails, test_stub_not_done = checker_tests(CASES)


class StubEarlyStopping:
    def __init__(self, patience, min_delta=0.0):
        raise NotImplementedError("HINT")


def test_early_stopping_class_stub_is_not_done():
    assert check_early_stopping(StubEarlyStopping).status == "not done"


def test_task_reference_agrees_with_library():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    ours = task_batch("sort")(5, 4, 9, g1)
    lib = make_toy_task("sort", 5, 4, 9, generator=g2)
    for a, b in zip(ours, (lib.src, lib.tgt_in, lib.tgt_out)):
        assert torch.equal(a, b)


def test_lr_reference_is_the_library_formula():
    for step in (0, 5, 10, 50, 99, 100, 200):
        assert my_lr(step, 1e-3, 1e-4, 10, 100) == pytest.approx(
            lr_at(step, lr=1e-3, min_lr=1e-4, warmup_iters=10, decay_iters=100))


def test_sorter_accepts_a_model_directly():
    assert check_sort_model(Oracle(lambda s: s.sort(dim=1).values), length=5, vocab_size=9).passed


def _notebook_train_sorter(seed: int):
    """The notebook's own train_sorter (its solution cell), in fast mode, for one seed."""
    from minigpt.train import train

    cell = next("".join(c["source"]) for c in json.loads(NOTEBOOK.read_text())["cells"]
                if "def train_sorter" in "".join(c["source"]))
    ns = {"FAST": True, "SEED": seed, "DEVICE": "cpu", "torch": torch, "make_toy_task": make_toy_task,
          "Transformer": Transformer, "TransformerConfig": TransformerConfig, "train": train}
    exec(cell, ns)
    return ns["train_sorter"], ns["SORT_LEN"], ns["SORT_VOCAB"]


def test_fast_mode_bar_fails_an_untrained_model(monkeypatch):
    monkeypatch.setenv("MINIGPT_FAST", "1")
    _, length, vocab = _notebook_train_sorter(0)
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, d_model=64, n_head=4,
                                          n_encoder_layers=2, n_decoder_layers=2, d_ff=128))
    with pytest.raises(ExerciseFailed, match="below 50%"):
        check_sort_model(model, length=length, vocab_size=vocab)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_mode_training_clears_the_bar(monkeypatch, seed):
    """The notebook's fast-mode training (200 steps) must pass the fast bar with margin, whatever the seed."""
    monkeypatch.setenv("MINIGPT_FAST", "1")
    with torch.random.fork_rng(devices=[]):
        train_sorter, length, vocab = _notebook_train_sorter(seed)
        model = train_sorter()
    assert check_sort_model(model, length=length, vocab_size=vocab, min_accuracy=FAST_MIN_ACCURACY + 0.2).passed
