"""Checkers of notebook 07: each passes the reference answer, fails plausible wrong answers with a message
naming the mistake, and reports stubs as not done."""

import math

import torch
import torch.nn.functional as F
from _exercise_cases import checker_tests, stub  # noqa: F401

from minigpt.exercises.nb07 import (
    check_beam_search,
    check_get_batch,
    check_perplexity,
    check_temperature_sampling,
    check_top_k,
)


# ---- 07.1 get_batch
def _windows(data, ix, block_size, dy=1):
    return (torch.stack([data[i : i + block_size] for i in ix]),
            torch.stack([data[i + dy : i + block_size + dy] for i in ix]))


def batch_ref(data, block_size, batch_size, generator):
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    return _windows(data, ix, block_size)


def batch_no_shift(data, block_size, batch_size, generator):
    x, _ = batch_ref(data, block_size, batch_size, generator)
    return x, x.clone()


def batch_off_by_one(data, block_size, batch_size, generator):  # never draws the last valid start
    return _windows(data, torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator), block_size)


def batch_global_rng(data, block_size, batch_size, generator):  # ignores the generator
    return batch_ref(data, block_size, batch_size, None)


def batch_overrun(data, block_size, batch_size, generator):  # y runs past the end of the text
    return _windows(data, torch.randint(len(data) - block_size + 1, (batch_size,), generator=generator), block_size)


def batch_same_window(data, block_size, batch_size, generator):  # one start for the whole batch
    i = torch.randint(len(data) - block_size, (1,), generator=generator)
    return _windows(data, i.repeat(batch_size), block_size)


def batch_shift_back(data, block_size, batch_size, generator):  # y is the PREVIOUS token
    ix = torch.randint(1, len(data) - block_size, (batch_size,), generator=generator)
    return _windows(data, ix, block_size, dy=-1)


def batch_swapped(data, block_size, batch_size, generator):
    x, y = batch_ref(data, block_size, batch_size, generator)
    return y, x


def batch_aligned(data, block_size, batch_size, generator):  # only starts at multiples of block_size
    n_blocks = (len(data) - 1) // block_size
    ix = torch.randint(n_blocks, (batch_size,), generator=generator) * block_size
    return _windows(data, ix, block_size)


def batch_shift_two(data, block_size, batch_size, generator):
    ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
    return _windows(data, ix, block_size, dy=2)


BATCH_MUTANTS = {
    "no shift": (batch_no_shift, r"NEXT token"),
    "off by one (last start never drawn)": (batch_off_by_one, r"excludes high"),
    "global RNG": (batch_global_rng, r"ignored the generator"),
    "overrun": (batch_overrun, r"past the end of the text"),
    "same window for all rows": (batch_same_window, r"same window"),
    "shifted the wrong way": (batch_shift_back, r"wrong way|PREVIOUS"),
    "x and y swapped": (batch_swapped, r"swapped"),
    "starts only at multiples of block_size": (batch_aligned, r"multiple of block_size"),
    "shifted by two": (batch_shift_two, r"by two"),
}


# ---- 07.2 temperature sampling
def sample_ref(logits, temperature, generator):
    return torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator)


def _mult(p, g):
    return torch.multinomial(p, 1, generator=g)


SAMPLE_MUTANTS = {
    "multiplies by T": (lambda lg, t, g: _mult(torch.softmax(lg * t, -1), g), r"multiplied by the temperature"),
    "ignores T": (lambda lg, t, g: _mult(torch.softmax(lg, -1), g), r"no effect"),
    "T applied after softmax": (lambda lg, t, g: _mult(torch.softmax(lg, -1) / t, g), r"after the softmax"),
    "argmax": (lambda lg, t, g: lg.argmax(-1, keepdim=True), r"argmax"),
    "no generator": (lambda lg, t, g: torch.multinomial(torch.softmax(lg / t, -1), 1), r"ignored the generator"),
    "softmax over batch": (lambda lg, t, g: _mult(torch.softmax(lg / t, 0), g), r"wrong dimension"),
    "divides by T twice": (lambda lg, t, g: _mult(torch.softmax(lg / t / t, -1), g), r"T\*\*2"),
    "returns shape (B,)": (lambda lg, t, g: _mult(torch.softmax(lg / t, -1), g)[:, 0], r"shape \(B, 1\)"),
    "one distribution for all rows": (
        lambda lg, t, g: torch.multinomial(torch.softmax(lg[0] / t, -1), lg.size(0), replacement=True,
                                           generator=g)[:, None],
        r"its own"),
}


# ---- 07.3 top-k
def top_k_ref(logits, k):
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def _kth(lg, k, j=-1):
    return torch.topk(lg, k, -1).values[..., j:][..., :1]


TOP_K_MUTANTS = {
    "zeros not -inf": (lambda lg, k: lg.masked_fill(lg < _kth(lg, k), 0.0), r"-inf, not 0"),
    "keeps k+1": (lambda lg, k: lg.masked_fill(lg < _kth(lg, min(k + 1, lg.size(-1))), float("-inf")),
                  r"one too many"),
    "global k-th value": (lambda lg, k: lg.masked_fill(lg < torch.topk(lg.flatten(), k).values[-1], float("-inf")),
                          r"its own k-th largest"),
    "returns only the values": (lambda lg, k: torch.topk(lg, k, -1).values, r"full \(B, V\)"),
    "keeps the smallest": (
        lambda lg, k: lg.masked_fill(lg > torch.topk(lg, k, -1, largest=False).values[..., -1:], float("-inf")),
        r"LARGEST"),
    "<= instead of <": (lambda lg, k: lg.masked_fill(lg <= _kth(lg, k), float("-inf")), r"<= kth"),
    "compares with the largest (values[..., 0])": (
        lambda lg, k: lg.masked_fill(lg < _kth(lg, k, 0), float("-inf")), r"values\[\.\.\., 0\]"),
    "finite -1e9 instead of -inf": (lambda lg, k: lg.masked_fill(lg < _kth(lg, k), -1e9), r"finite"),
    "softmax of the kept logits": (lambda lg, k: torch.log_softmax(top_k_ref(lg, k), -1), r"unchanged"),
}


# ---- 07.4 perplexity
def _losses(model, tokens, T, full_only=False, stride=None, shift=True):
    out = []
    for i in range(0, len(tokens) - 1, stride or T):
        chunk = tokens[i : i + T + 1]
        if full_only and len(chunk) < T + 1:
            break
        logits, _ = model(chunk[None, :-1])
        out.append(F.cross_entropy(logits[0], chunk[1:] if shift else chunk[:-1], reduction="none"))
    return out


@torch.no_grad()
def ppl_ref(model, tokens, T):
    return math.exp(torch.cat(_losses(model, tokens, T)).mean().item())


@torch.no_grad()
def ppl_model_loss_per_window(model, tokens, T):  # model(x, y) gives each window's MEAN loss
    losses = []
    for i in range(0, len(tokens) - 1, T):
        chunk = tokens[i : i + T + 1]
        losses.append(model(chunk[None, :-1], chunk[None, 1:])[1].item())
    return math.exp(sum(losses) / len(losses))


PPL_MUTANTS = {
    "returns the loss": (lambda m, t, T: torch.cat(_losses(m, t, T)).mean().item(), r"mean loss.*exp"),
    "mean of window means": (
        lambda m, t, T: math.exp(torch.stack([x.mean() for x in _losses(m, t, T)]).mean().item()),
        r"averaged the per-window mean"),
    "model loss averaged over windows": (ppl_model_loss_per_window, r"averaged the per-window mean"),
    "drops the short tail": (lambda m, t, T: math.exp(torch.cat(_losses(m, t, T, full_only=True)).mean().item()),
                             r"dropped the last, shorter window"),
    "base 2": (lambda m, t, T: 2 ** torch.cat(_losses(m, t, T)).mean().item(), r"2 \*\* loss"),
    "exp of the sum": (lambda m, t, T: math.exp(min(torch.cat(_losses(m, t, T)).sum().item(), 700)), r"SUMMED"),
    "divides by N": (lambda m, t, T: math.exp(torch.cat(_losses(m, t, T)).sum().item() / len(t)), r"divided by N"),
    "no shift (targets = inputs)": (
        lambda m, t, T: math.exp(torch.cat(_losses(m, t, T, shift=False)).mean().item()), r"NEXT token"),
    "windows block_size + 1 apart": (
        lambda m, t, T: math.exp(torch.cat(_losses(m, t, T, stride=T + 1)).mean().item()), r"block_size \+ 1 apart"),
}


# ---- 07.5 beam search
@torch.no_grad()
def beam_ref(model, idx, max_new_tokens, beam_width):
    beams, scores = idx, torch.zeros(1)
    for _ in range(max_new_tokens):
        logp = F.log_softmax(model(beams)[0][:, -1], dim=-1)  # (W, V)
        V = logp.size(-1)
        top, ix = torch.topk((scores[:, None] + logp).flatten(), min(beam_width, logp.numel()))
        beams = torch.cat([beams[ix // V], (ix % V)[:, None]], dim=1)
        scores = top
    return beams[scores.argmax()][None]


@torch.no_grad()
def beam_greedy(model, idx, max_new_tokens, beam_width):
    for _ in range(max_new_tokens):
        idx = torch.cat([idx, model(idx)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def _beam(score_fn=None, start_copies=False, reorder=True, pick_last=False, keep_history=True):
    @torch.no_grad()
    def search(model, idx, max_new_tokens, beam_width):
        beams = idx.repeat(beam_width, 1) if start_copies else idx
        scores = torch.zeros(beams.size(0))
        for _ in range(max_new_tokens):
            logits = model(beams)[0][:, -1]
            s = score_fn(logits) if score_fn else F.log_softmax(logits, -1)
            V = s.size(-1)
            total = (scores[:, None] + s) if keep_history else s
            top, ix = torch.topk(total.flatten(), min(beam_width, s.numel()))
            rows = ix // V if reorder else torch.arange(len(ix)) % beams.size(0)
            beams = torch.cat([beams[rows], (ix % V)[:, None]], dim=1)
            scores = top
        return beams[-1:] if pick_last else beams[scores.argmax()][None]

    return search


@torch.no_grad()
def beam_one_step_short(model, idx, max_new_tokens, beam_width):  # range(max_new_tokens - 1)
    return beam_ref(model, idx, max_new_tokens - 1, beam_width)


BEAM_MUTANTS = {
    "greedy": (beam_greedy, r"greedy"),
    "last-token score": (_beam(keep_history=False), r"SUM of the log-probabilities"),
    "sum of probabilities": (_beam(score_fn=lambda z: z.softmax(-1)), r"added probabilities"),
    "raw logits": (_beam(score_fn=lambda z: z), r"raw logits"),
    "tokens appended to the wrong beams": (_beam(reorder=False), r"wrong beams"),
    "starts from beam_width copies of the prompt": (_beam(start_copies=True), r"copies of the prompt"),
    "returns the last beam": (_beam(pick_last=True), r"last beam"),
    "one step short": (beam_one_step_short, r"3 new tokens"),
}

CASES = [
    (check_get_batch, batch_ref, BATCH_MUTANTS),
    (check_temperature_sampling, sample_ref, SAMPLE_MUTANTS),
    (check_top_k, top_k_ref, TOP_K_MUTANTS),
    (check_perplexity, ppl_ref, PPL_MUTANTS),
    (check_beam_search, beam_ref, BEAM_MUTANTS),
]

test_reference_passes, test_mutant_fails, test_stub_not_done = checker_tests(CASES)


def test_top_k_accepts_both_tie_policies():
    """With ties at the k-th value, keeping exactly k (torch.topk + scatter) is as right as keeping all ties."""
    def scatter_top_k(logits, k):
        vals, ix = torch.topk(logits, k, dim=-1)
        return torch.full_like(logits, float("-inf")).scatter(-1, ix, vals)

    assert check_top_k(scatter_top_k).passed


def test_library_agrees_with_the_checkers():
    from minigpt.generation import beam_search, filter_top_k

    assert check_top_k(filter_top_k).passed
    assert check_beam_search(lambda m, i, n, w: beam_search(m, i, n, beam_width=w)).passed
