"""Checkers of notebook 07: each passes the reference answer, fails plausible wrong answers, and reports stubs."""

import math

import pytest
import torch
import torch.nn.functional as F

from minigpt.exercises import ExerciseFailed
from minigpt.exercises.nb07 import (
    check_beam_search,
    check_get_batch,
    check_perplexity,
    check_temperature_sampling,
    check_top_k,
)


def stub(*args, **kwargs):
    raise NotImplementedError("HINT")


# ---- 07.1 get_batch
def batch_ref(data, block_size, batch_size, generator):
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    x = torch.stack([data[i : i + block_size] for i in ix])
    y = torch.stack([data[i + 1 : i + block_size + 1] for i in ix])
    return x, y


def batch_no_shift(data, block_size, batch_size, generator):
    x, _ = batch_ref(data, block_size, batch_size, generator)
    return x, x.clone()


def batch_off_by_one(data, block_size, batch_size, generator):  # never draws the last valid start
    ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
    return (torch.stack([data[i : i + block_size] for i in ix]),
            torch.stack([data[i + 1 : i + block_size + 1] for i in ix]))


def batch_global_rng(data, block_size, batch_size, generator):  # ignores the generator
    return batch_ref(data, block_size, batch_size, None)


def batch_overrun(data, block_size, batch_size, generator):  # y runs past the end of the text
    ix = torch.randint(len(data) - block_size + 1, (batch_size,), generator=generator)
    return (torch.stack([data[i : i + block_size] for i in ix]),
            torch.stack([data[i + 1 : i + block_size + 1] for i in ix]))


# ---- 07.2 temperature sampling
def sample_ref(logits, temperature, generator):
    return torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator)


SAMPLE_MUTANTS = {
    "multiplies by T": lambda lg, t, g: torch.multinomial(torch.softmax(lg * t, -1), 1, generator=g),
    "ignores T": lambda lg, t, g: torch.multinomial(torch.softmax(lg, -1), 1, generator=g),
    "argmax": lambda lg, t, g: lg.argmax(-1, keepdim=True),
    "no generator": lambda lg, t, g: torch.multinomial(torch.softmax(lg / t, -1), 1),
    "softmax over batch": lambda lg, t, g: torch.multinomial(torch.softmax(lg / t, 0), 1, generator=g),
}


# ---- 07.3 top-k
def top_k_ref(logits, k):
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


TOP_K_MUTANTS = {
    "zeros not -inf": lambda lg, k: lg.masked_fill(lg < torch.topk(lg, k, -1).values[..., -1:], 0.0),
    "keeps k+1": lambda lg, k: lg.masked_fill(
        lg < torch.topk(lg, min(k + 1, lg.size(-1)), -1).values[..., -1:], float("-inf")
    ),
    "global k-th value": lambda lg, k: lg.masked_fill(lg < torch.topk(lg.flatten(), k).values[-1], float("-inf")),
    "returns only the values": lambda lg, k: torch.topk(lg, k, -1).values,
    "keeps the smallest": lambda lg, k: lg.masked_fill(
        lg > torch.topk(lg, k, -1, largest=False).values[..., -1:], float("-inf")
    ),
}


# ---- 07.4 perplexity
def _losses(model, tokens, T, full_only=False):
    out = []
    for i in range(0, len(tokens) - 1, T):
        chunk = tokens[i : i + T + 1]
        if full_only and len(chunk) < T + 1:
            break
        logits, _ = model(chunk[None, :-1])
        out.append(F.cross_entropy(logits[0], chunk[1:], reduction="none"))
    return out


@torch.no_grad()
def ppl_ref(model, tokens, T):
    return math.exp(torch.cat(_losses(model, tokens, T)).mean().item())


PPL_MUTANTS = {
    "returns the loss": lambda m, t, T: torch.cat(_losses(m, t, T)).mean().item(),
    "mean of window means": lambda m, t, T: math.exp(torch.stack([x.mean() for x in _losses(m, t, T)]).mean().item()),
    "drops the short tail": lambda m, t, T: math.exp(torch.cat(_losses(m, t, T, full_only=True)).mean().item()),
    "base 2": lambda m, t, T: 2 ** torch.cat(_losses(m, t, T)).mean().item(),
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


@torch.no_grad()
def beam_last_token_score(model, idx, max_new_tokens, beam_width):  # forgets the history of each beam
    beams = idx
    for _ in range(max_new_tokens):
        logp = F.log_softmax(model(beams)[0][:, -1], dim=-1)
        V = logp.size(-1)
        top, ix = torch.topk(logp.flatten(), min(beam_width, logp.numel()))
        beams = torch.cat([beams[ix // V], (ix % V)[:, None]], dim=1)
    return beams[:1]


@torch.no_grad()
def beam_sum_of_probs(model, idx, max_new_tokens, beam_width):  # adds probabilities instead of log-probs
    beams, scores = idx, torch.zeros(1)
    for _ in range(max_new_tokens):
        p = F.softmax(model(beams)[0][:, -1], dim=-1)
        V = p.size(-1)
        top, ix = torch.topk((scores[:, None] + p).flatten(), min(beam_width, p.numel()))
        beams = torch.cat([beams[ix // V], (ix % V)[:, None]], dim=1)
        scores = top
    return beams[scores.argmax()][None]


CASES = [
    (check_get_batch, batch_ref,
     {"no shift": batch_no_shift, "off by one": batch_off_by_one, "global RNG": batch_global_rng,
      "overrun": batch_overrun}),
    (check_temperature_sampling, sample_ref, SAMPLE_MUTANTS),
    (check_top_k, top_k_ref, TOP_K_MUTANTS),
    (check_perplexity, ppl_ref, PPL_MUTANTS),
    (check_beam_search, beam_ref,
     {"greedy": beam_greedy, "last-token score": beam_last_token_score, "sum of probabilities": beam_sum_of_probs}),
]
MUTANTS = [(check, name, fn) for check, _, muts in CASES for name, fn in muts.items()]


@pytest.mark.parametrize("check,ref", [(c, r) for c, r, _ in CASES], ids=lambda v: getattr(v, "__name__", ""))
def test_reference_passes(check, ref):
    assert check(ref).status == "passed"


@pytest.mark.parametrize("check,name,fn", MUTANTS, ids=[f"{c.__name__}-{n}" for c, n, _ in MUTANTS])
def test_mutant_fails(check, name, fn):
    with pytest.raises(ExerciseFailed):
        check(fn)


@pytest.mark.parametrize("check", [c for c, _, _ in CASES], ids=lambda c: c.__name__)
def test_stub_is_not_done(check):
    result = check(stub)
    assert result.status == "not done" and not result.passed


def test_messages_teach():
    with pytest.raises(ExerciseFailed, match="NEXT token"):
        check_get_batch(batch_no_shift)
    with pytest.raises(ExerciseFailed, match="Divide the logits"):
        check_temperature_sampling(SAMPLE_MUTANTS["multiplies by T"])
    with pytest.raises(ExerciseFailed, match="-inf, not 0"):
        check_top_k(TOP_K_MUTANTS["zeros not -inf"])
    with pytest.raises(ExerciseFailed, match="exp"):
        check_perplexity(PPL_MUTANTS["returns the loss"])
    with pytest.raises(ExerciseFailed, match="SUM of log-probabilities"):
        check_beam_search(beam_last_token_score)
