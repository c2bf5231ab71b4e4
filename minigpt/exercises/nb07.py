"""Checkers for notebook 07 (a character GPT on tiny Shakespeare).

References are independent of the student's code: windows of ``torch.arange`` data whose values
name their own positions, ``torch.softmax`` and ``torch.topk``, ``F.cross_entropy`` over the whole
sequence at once, and, for beam search, both :func:`minigpt.generation.beam_search` and an
exhaustive search over every continuation of a tiny vocabulary.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from ._core import checker, expect

__all__ = [
    "check_get_batch",
    "check_temperature_sampling",
    "check_top_k",
    "check_perplexity",
    "check_beam_search",
]


# ------------------------------------------------------------------ 07.1 get_batch


@checker("07.1 get_batch")
def check_get_batch(fn) -> None:
    """fn(data (N,), block_size, batch_size, generator) -> x (B, T), y (B, T)."""
    # data[i] == i, so every value names its own position and a window reveals where it starts
    for N, T, B in [(100, 8, 4), (40, 16, 3)]:
        data = torch.arange(N)
        out = fn(data, T, B, torch.Generator().manual_seed(0))
        expect(isinstance(out, tuple | list) and len(out) == 2, "return a pair (x, y)")
        x, y = out
        expect(isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor), "x and y must be tensors")
        expect(tuple(x.shape) == (B, T), f"x must have shape (batch_size, block_size) = {(B, T)}, got {tuple(x.shape)}")
        expect(tuple(y.shape) == (B, T), f"y must have shape (batch_size, block_size) = {(B, T)}, got {tuple(y.shape)}")
        expect(x.dtype == torch.long and y.dtype == torch.long, "x and y must hold token ids (torch.long)")
        starts = x[:, 0]
        expect(
            torch.equal(x, starts[:, None] + torch.arange(T)),
            "each row of x must be a contiguous window data[i : i + block_size] of the text",
        )
        expect(not torch.equal(y, x), "y equals x: the target of position t is the NEXT token, data[i + t + 1]")
        expect(
            torch.equal(y, x + 1),
            "y must be x shifted by one token: y[b, t] = data[i + t + 1] (the token that follows x[b, t])",
        )
        expect(bool((starts >= 0).all()), "a window starts before the text begins")
        expect(
            bool((starts <= N - T - 1).all()),
            f"a window starts at {int(starts.max())}, but with {N} tokens and block_size {T} the last start that "
            f"leaves room for y's final token is {N - T - 1}",
        )
    # reproducible with the given generator, and different for another seed
    data = torch.arange(1000)
    a = fn(data, 8, 16, torch.Generator().manual_seed(123))
    b = fn(data, 8, 16, torch.Generator().manual_seed(123))
    c = fn(data, 8, 16, torch.Generator().manual_seed(124))
    expect(
        torch.equal(a[0], b[0]),
        "the same seeded generator gave two different batches: pass generator=generator to torch.randint",
    )
    expect(not torch.equal(a[0], c[0]), "different seeds gave the same batch: the starts must be random")
    # every valid start can be drawn, the last one included (an off-by-one here wastes the end of the text)
    N, T = 12, 8  # valid starts: 0, 1, 2, 3
    x, _ = fn(torch.arange(N), T, 400, torch.Generator().manual_seed(1))
    seen = set(x[:, 0].tolist())
    expect(
        seen == set(range(N - T)),
        f"with {N} tokens and block_size {T} the starts 0..{N - T - 1} are all valid; in 400 draws you used "
        f"{sorted(seen)}. torch.randint(high) excludes high: use high = len(data) - block_size",
    )


# ------------------------------------------------------------------ 07.2 temperature sampling


@checker("07.2 temperature sampling")
def check_temperature_sampling(fn) -> None:
    """fn(logits (B, V), temperature, generator) -> (B, 1) token ids drawn from softmax(logits / T)."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])  # (V,)
    n = 6000
    for temp in (1.0, 0.5, 2.0):
        rows = logits.expand(n, -1).clone()  # (n, V): n independent draws in one call
        ids = fn(rows, temp, torch.Generator().manual_seed(0))
        expect(isinstance(ids, torch.Tensor), f"return a tensor of token ids, got {type(ids).__name__}")
        expect(tuple(ids.shape) == (n, 1), f"return shape (B, 1) = {(n, 1)}, got {tuple(ids.shape)}")
        expect(ids.dtype == torch.long, f"token ids must be torch.long, got {ids.dtype}")
        expect(bool(((ids >= 0) & (ids < len(logits))).all()), "some ids are outside the vocabulary")
        freq = torch.bincount(ids.flatten(), minlength=len(logits)).float() / n
        want = torch.softmax(logits / temp, dim=-1)
        if len(set(ids.flatten().tolist())) == 1:
            expect(False, f"at temperature {temp} every draw is token {int(ids[0])}: you took the argmax "
                   "instead of sampling with torch.multinomial")
        err = (freq - want).abs().max().item()
        # 6000 draws: one standard error is at most 0.0065, so 0.03 is > 4.5 sigma
        expect(
            err < 0.03,
            f"at temperature {temp} your samples have frequencies {[round(v, 3) for v in freq.tolist()]} but "
            f"softmax(logits / T) is {[round(v, 3) for v in want.tolist()]}. Divide the logits by the temperature "
            "(not multiply), then softmax, then torch.multinomial.",
        )
    g1 = fn(logits.expand(50, -1).clone(), 1.0, torch.Generator().manual_seed(5))
    g2 = fn(logits.expand(50, -1).clone(), 1.0, torch.Generator().manual_seed(5))
    expect(torch.equal(g1, g2), "the same seeded generator gave different samples: pass generator= to multinomial")
    # T -> 0 approaches argmax, per row
    g = torch.Generator().manual_seed(3)
    rows = torch.stack([torch.randperm(9, generator=g) for _ in range(64)]).float() * 0.5  # gaps >= 0.5
    ids = fn(rows.clone(), 0.01, torch.Generator().manual_seed(0))
    expect(
        torch.equal(ids.flatten(), rows.argmax(-1)),
        "at temperature 0.01 every row should pick its largest logit (T -> 0 is greedy decoding); sample each "
        "row from its own distribution (softmax over dim=-1)",
    )


# ------------------------------------------------------------------ 07.3 top-k filtering


def _ref_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    vals, ix = torch.topk(logits, k, dim=-1)
    out = torch.full_like(logits, float("-inf"))
    return out.scatter(-1, ix, vals)


@checker("07.3 top-k filtering")
def check_top_k(fn) -> None:
    """fn(logits (B, V), k) -> logits with all but the k largest of each row set to -inf."""
    g = torch.Generator().manual_seed(11)
    for B, V, k in [(1, 10, 3), (4, 7, 1), (3, 12, 5), (2, 6, 6)]:
        logits = torch.randn(B, V, generator=g) * 2
        got = fn(logits.clone(), k)
        want = _ref_top_k(logits, k)
        expect(isinstance(got, torch.Tensor), f"return a tensor, got {type(got).__name__}")
        expect(
            tuple(got.shape) == (B, V),
            f"return the full (B, V) = {(B, V)} logits with the others set to -inf, got shape {tuple(got.shape)}; "
            "the sampler needs every token's position in the vocabulary",
        )
        kept = torch.isfinite(got)
        n_kept = kept.sum(-1).tolist()
        expect(
            not (got == 0).any() or (logits == 0).any(),
            "filtered tokens must be -inf, not 0: a logit of 0 still has probability > 0 after softmax",
        )
        expect(
            all(n == k for n in n_kept),
            f"with k={k} each row must keep exactly {k} logits; yours keep {n_kept}. Compare each row with its own "
            "k-th largest value (torch.topk(logits, k, dim=-1).values[..., -1:])",
        )
        expect(
            torch.equal(kept, torch.isfinite(want)),
            f"for logits of shape {(B, V)} you kept the wrong tokens: keep the k LARGEST logits of each row "
            "(take topk over the last dimension, the vocabulary)",
        )
        expect(torch.equal(got[kept], logits[kept]), "the kept logits must be unchanged (no rescaling)")


# ------------------------------------------------------------------ 07.4 perplexity


def _tiny_model(vocab: int, block: int, seed: int):
    from ..model import GPT, GPTConfig

    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=1, n_head=2, n_embd=16))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # larger weights than GPT-2's init: peaked, varied next-token distributions
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


def _ref_perplexity(model, tokens: torch.Tensor, block_size: int) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(tokens) - 1, block_size):
            chunk = tokens[i : i + block_size + 1]
            logits, _ = model(chunk[None, :-1])  # (1, t, V)
            total += F.cross_entropy(logits[0], chunk[1:], reduction="sum").item()
            count += len(chunk) - 1
    return math.exp(total / count)


@checker("07.4 perplexity on a token sequence")
def check_perplexity(fn) -> None:
    """fn(model, tokens (N,), block_size) -> float: exp of the mean loss over all N - 1 predictions."""
    for N, T, seed in [(65, 16, 0), (50, 16, 1), (33, 8, 2)]:
        model = _tiny_model(11, T, seed)
        tokens = torch.randint(11, (N,), generator=torch.Generator().manual_seed(seed))
        got = fn(model, tokens.clone(), T)
        if isinstance(got, torch.Tensor):
            expect(got.numel() == 1, f"return one number, got a tensor of shape {tuple(got.shape)}")
            got = got.item()
        expect(isinstance(got, int | float), f"return a float, got {type(got).__name__}")
        want = _ref_perplexity(model, tokens, T)
        expect(
            not math.isclose(got, math.log(want), rel_tol=1e-4),
            f"you returned the mean loss ({math.log(want):.4f}); perplexity is exp(loss) = {want:.3f}",
        )
        expect(
            not math.isclose(got, 2 ** math.log(want), rel_tol=1e-4),
            "you used 2 ** loss: cross-entropy is in nats (natural log), so perplexity is math.exp(loss)",
        )
        expect(
            math.isclose(got, want, rel_tol=1e-4),
            f"with {N} tokens and block_size {T} the perplexity is {want:.4f}, got {got:.4f}. Every one of the "
            f"{N - 1} predictions must count once and equally: windows start at 0, T, 2T, ...; the last one is "
            "shorter; sum the losses (reduction='sum') and divide by the number of predictions",
        )


# ------------------------------------------------------------------ 07.5 beam search


def _exhaustive_best(model, prompt: torch.Tensor, n: int) -> torch.Tensor:
    V = model.config.vocab_size
    best, best_score = None, -math.inf
    with torch.no_grad():
        for cont in itertools.product(range(V), repeat=n):
            seq = torch.cat([prompt, torch.tensor([cont])], dim=1)  # (1, T + n)
            logits, _ = model(seq[:, :-1])
            logp = F.log_softmax(logits[0, prompt.size(1) - 1 :], dim=-1)  # (n, V)
            score = logp.gather(-1, seq[0, prompt.size(1) :, None]).sum().item()
            if score > best_score:
                best, best_score = seq, score
    return best


@checker("07.5 beam search")
def check_beam_search(fn) -> None:
    """fn(model, idx (1, T), max_new_tokens, beam_width) -> (1, T + max_new_tokens), the best beam."""
    from ..generation import beam_search

    # 1. exact: with beam_width >= V ** (n - 1) no candidate is ever dropped, so beam search must find
    #    the most probable continuation, which we get by scoring all V ** n of them
    model = _tiny_model(4, 16, 3)
    prompt = torch.tensor([[1, 2]])
    got = fn(model, prompt.clone(), 3, 16)
    expect(isinstance(got, torch.Tensor), f"return a tensor of token ids, got {type(got).__name__}")
    expect(tuple(got.shape) == (1, 5), f"return the prompt plus 3 new tokens, shape (1, 5); got {tuple(got.shape)}")
    expect(torch.equal(got[:, :2], prompt), "the result must start with the prompt")
    best = _exhaustive_best(model, prompt, 3)
    expect(
        torch.equal(got, best),
        f"with a beam as wide as all 16 two-token prefixes, beam search must return the most probable continuation "
        f"{best[0, 2:].tolist()}, got {got[0, 2:].tolist()}. Rank beams by the SUM of log-probabilities of all "
        "their tokens, and pick the top beam_width over all (beam, next token) pairs",
    )
    # 2. width 1 is greedy decoding
    model = _tiny_model(9, 32, 4)
    prompt = torch.tensor([[0, 5, 3]])
    seq = prompt
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, model(seq)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    got = fn(model, prompt.clone(), 6, 1)
    expect(torch.equal(got, seq), "beam_width=1 must be greedy decoding (the argmax token at every step)")
    # 3. the library's beam search on a few models and widths
    for seed, width in [(5, 2), (9, 3), (10, 2), (13, 4)]:
        model = _tiny_model(9, 32, seed)
        prompt = torch.tensor([[seed % 9, 1]])
        got = fn(model, prompt.clone(), 8, width)
        want = beam_search(model, prompt, 8, beam_width=width)
        expect(
            torch.equal(got, want),
            f"beam width {width}, 8 new tokens: expected {want[0].tolist()}, got {got[0].tolist()}. Keep the "
            f"{width} best sequences by total log-probability at every step and return the best one at the end",
        )
