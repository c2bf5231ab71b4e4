"""Checkers for notebook 07 (a character GPT on tiny Shakespeare).

References are independent of the student's code: windows of ``torch.arange`` data whose values
name their own positions, ``torch.softmax`` and ``torch.topk``, ``F.cross_entropy`` over the whole
sequence at once, and, for beam search, both :func:`minigpt.generation.beam_search` and an
exhaustive search over every continuation of a tiny vocabulary. Where a common mistake gives a
recognisable answer, the checker computes that answer too and names the mistake when it matches.
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


def _batch(fn, N: int, T: int, B: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        out = fn(torch.arange(N), T, B, torch.Generator().manual_seed(seed))
    except RuntimeError as e:
        if "stack expects each tensor to be equal size" not in str(e):
            raise
        expect(False, f"a window ran past the end of the text, so torch.stack got a shorter row ({e}). With {N} "
               f"tokens and block_size {T} the last start that leaves room for y's final token is {N - T - 1}: "
               "draw starts with torch.randint(len(data) - block_size, ...)")
    return _pair(out, B, T)


def _pair(out, B: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    expect(isinstance(out, tuple | list) and len(out) == 2, "return a pair (x, y)")
    x, y = out
    expect(isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor), "x and y must be tensors")
    expect(tuple(x.shape) == (B, T), f"x must have shape (batch_size, block_size) = {(B, T)}, got {tuple(x.shape)}")
    expect(tuple(y.shape) == (B, T), f"y must have shape (batch_size, block_size) = {(B, T)}, got {tuple(y.shape)}")
    expect(x.dtype == torch.long and y.dtype == torch.long, "x and y must hold token ids (torch.long)")
    return x, y


@checker("07.1 get_batch")
def check_get_batch(fn) -> None:
    """fn(data (N,), block_size, batch_size, generator) -> x (B, T), y (B, T)."""
    # data[i] == i, so every value names its own position and a window reveals where it starts
    for N, T, B in [(100, 8, 4), (40, 16, 3), (1000, 8, 16)]:
        x, y = _batch(fn, N, T, B, 0)
        starts = x[:, 0]
        expect(
            torch.equal(x, starts[:, None] + torch.arange(T)),
            "each row of x must be a contiguous window data[i : i + block_size] of the text",
        )
        expect(not torch.equal(y, x), "y equals x: the target of position t is the NEXT token, data[i + t + 1]")
        expect(
            not torch.equal(y, x - 1),
            "y is one token BEFORE x (y[b, t] is the PREVIOUS token of x[b, t]): x and y are swapped, or y is "
            "shifted the wrong way. x = data[i : i + block_size], y = data[i + 1 : i + block_size + 1]",
        )
        expect(
            not torch.equal(y, x + 2),
            "y is x shifted by two tokens: the target of position t is the very next token, data[i + t + 1]",
        )
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
        if B >= 4:  # 4 equal starts out of 92 or more: chance below 1e-5
            expect(
                len(set(starts.tolist())) > 1,
                f"all {B} rows are the same window (start {int(starts[0])}): draw batch_size start positions, "
                "one per row (torch.randint(high, (batch_size,), generator=generator))",
            )
    # reproducible with the given generator, and different for another seed
    a, b, c = (_batch(fn, 1000, 8, 16, seed) for seed in (123, 123, 124))
    expect(
        torch.equal(a[0], b[0]),
        "the same seeded generator gave two different batches: you ignored the generator argument; pass "
        "generator=generator to torch.randint",
    )
    expect(not torch.equal(a[0], c[0]), "different seeds gave the same batch: the starts must be random")
    expect(
        not bool((a[0][:, 0] % 8 == 0).all()),
        "every window starts at a multiple of block_size: any position can start a window, draw the start "
        "with torch.randint(len(data) - block_size, ...), not a block number times block_size",
    )
    # every valid start can be drawn, the last one included (an off-by-one here wastes the end of the text)
    N, T = 12, 8  # valid starts: 0, 1, 2, 3
    x, _ = _batch(fn, N, T, 400, 1)
    seen = set(x[:, 0].tolist())
    expect(
        seen == set(range(N - T)),
        f"with {N} tokens and block_size {T} the starts 0..{N - T - 1} are all valid; in 400 draws you used "
        f"{sorted(seen)}"
        + (
            f". The last start {N - T - 1} never came: torch.randint(high) excludes high, so use "
            "high = len(data) - block_size (not len(data) - block_size - 1)"
            if seen == set(range(N - T - 1))
            else ""
        ),
    )


# ------------------------------------------------------------------ 07.2 temperature sampling


def _freq_str(p: torch.Tensor) -> str:
    return str([round(v, 3) for v in p.tolist()])


@checker("07.2 temperature sampling")
def check_temperature_sampling(fn) -> None:
    """fn(logits (B, V), temperature, generator) -> (B, 1) token ids drawn from softmax(logits / T)."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])  # (V,)
    V = len(logits)
    n = 6000
    for temp in (1.0, 0.5, 2.0):
        rows = logits.expand(n, -1).clone()  # (n, V): n independent draws in one call
        ids = fn(rows, temp, torch.Generator().manual_seed(0))
        expect(isinstance(ids, torch.Tensor), f"return a tensor of token ids, got {type(ids).__name__}")
        expect(tuple(ids.shape) == (n, 1), f"return shape (B, 1) = {(n, 1)}, got {tuple(ids.shape)}")
        expect(ids.dtype == torch.long, f"token ids must be torch.long, got {ids.dtype}")
        expect(bool(((ids >= 0) & (ids < V)).all()), "some ids are outside the vocabulary")
        if len(set(ids.flatten().tolist())) == 1:
            expect(False, f"at temperature {temp} every draw is token {int(ids[0])}: you took the argmax "
                   "instead of sampling with torch.multinomial")
        freq = torch.bincount(ids.flatten(), minlength=V).float() / n
        want = torch.softmax(logits / temp, dim=-1)
        # 6000 draws: one standard error is at most 0.0065, so 0.03 is > 4.5 sigma
        if (freq - want).abs().max().item() < 0.03:
            continue
        mistakes = [
            (torch.softmax(logits, -1), "your samples follow softmax(logits) whatever the temperature: the "
             "temperature has no effect. Divide the LOGITS by T before the softmax (dividing the probabilities "
             "after the softmax changes nothing, multinomial renormalises them)"),
            (torch.softmax(logits * temp, -1), "your samples follow softmax(logits * T): you multiplied by the "
             "temperature (or raised the probabilities to the power T). Divide the logits by T"),
            (torch.full((V,), 1 / V), "your samples are uniform over the vocabulary: the softmax ran over the "
             "wrong dimension (use dim=-1, the vocabulary, not dim=0, the batch)"),
            (torch.softmax(logits / temp**2, -1), "your samples follow softmax(logits / T**2): divide the logits "
             "by T once"),
        ]
        for p, message in mistakes:
            if (p - want).abs().max().item() > 0.1 and (freq - p).abs().max().item() < 0.03:
                expect(False, f"at temperature {temp}: {message}")
        expect(
            False,
            f"at temperature {temp} your samples have frequencies {_freq_str(freq)} but softmax(logits / T) is "
            f"{_freq_str(want)}. Divide the logits by the temperature, then softmax over the last dimension, "
            "then torch.multinomial.",
        )
    g1 = fn(logits.expand(50, -1).clone(), 1.0, torch.Generator().manual_seed(5))
    g2 = fn(logits.expand(50, -1).clone(), 1.0, torch.Generator().manual_seed(5))
    expect(torch.equal(g1, g2), "the same seeded generator gave different samples: you ignored the generator "
           "argument; pass generator=generator to torch.multinomial")
    # T -> 0 approaches argmax, per row
    g = torch.Generator().manual_seed(3)
    rows = torch.stack([torch.randperm(9, generator=g) for _ in range(64)]).float() * 0.5  # gaps >= 0.5
    ids = fn(rows.clone(), 0.01, torch.Generator().manual_seed(0))
    expect(tuple(ids.shape) == (64, 1), f"return shape (B, 1) = (64, 1), got {tuple(ids.shape)}")
    expect(
        torch.equal(ids.flatten(), rows.argmax(-1)),
        "at temperature 0.01 every row should pick its own largest logit (T -> 0 is greedy decoding); sample "
        "each row from its own distribution (softmax over dim=-1, one multinomial draw per row)",
    )


# ------------------------------------------------------------------ 07.3 top-k filtering


def _ref_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    vals, ix = torch.topk(logits, k, dim=-1)
    out = torch.full_like(logits, float("-inf"))
    return out.scatter(-1, ix, vals)


def _top_k_result(fn, logits: torch.Tensor, k: int) -> torch.Tensor:
    B, V = logits.shape
    got = fn(logits.clone(), k)
    expect(isinstance(got, torch.Tensor), f"return a tensor, got {type(got).__name__}")
    expect(
        tuple(got.shape) == (B, V),
        f"return the full (B, V) = {(B, V)} logits with the others set to -inf, got shape {tuple(got.shape)}; "
        "the sampler needs every token's position in the vocabulary",
    )
    expect(
        not ((got == 0) & (logits != 0)).any(),
        "filtered tokens must be -inf, not 0: a logit of 0 still has probability > 0 after softmax",
    )
    must_go = logits < torch.topk(logits, k, dim=-1).values[..., -1:]  # certainly not among the k largest
    left = got[must_go]
    if left.numel() and bool((left < -1e3).all()) and bool(torch.isfinite(left).any()):
        used = left[torch.isfinite(left)][0].item()
        expect(False, f"filtered tokens must be exactly float('-inf'); you used {used:g}, a finite number that "
               "still gets a (tiny) probability")
    return got


@checker("07.3 top-k filtering")
def check_top_k(fn) -> None:
    """fn(logits (B, V), k) -> logits with all but the k largest of each row set to -inf."""
    g = torch.Generator().manual_seed(11)
    for B, V, k in [(1, 10, 3), (4, 7, 1), (3, 12, 5), (2, 6, 6), (5, 9, 4)]:
        logits = torch.randn(B, V, generator=g) * 2
        got = _top_k_result(fn, logits, k)
        want = _ref_top_k(logits, k)
        kept = torch.isfinite(got)
        n_kept = kept.sum(-1).tolist()
        if k > 1 and all(n == 1 for n in n_kept):
            expect(False, f"with k={k} you kept only the largest logit of each row: compare with the k-th largest "
                   "value, torch.topk(logits, k, dim=-1).values[..., -1:] (the LAST of the k), not values[..., 0]")
        if all(n == k - 1 for n in n_kept):
            expect(False, f"with k={k} each row keeps {k - 1}: you also removed the k-th largest value; mask "
                   "logits < kth (strictly), not logits <= kth")
        if all(n == min(k + 1, V) for n in n_kept) and k < V:
            expect(False, f"with k={k} each row keeps {k + 1}: one too many; the threshold is the k-th largest "
                   "value, torch.topk(logits, k, dim=-1).values[..., -1:]")
        expect(
            all(n == k for n in n_kept),
            f"with k={k} each row must keep exactly {k} logits; yours keep {n_kept}. Compare each row with its own "
            "k-th largest value (torch.topk(logits, k, dim=-1).values[..., -1:], the last dimension)",
        )
        expect(
            torch.equal(kept, torch.isfinite(want)),
            f"for logits of shape {(B, V)} you kept the wrong tokens: keep the k LARGEST logits of each row "
            "(take topk over the last dimension, the vocabulary)",
        )
        expect(torch.equal(got[kept], logits[kept]), "the kept logits must be unchanged (no rescaling, no softmax)")
    # ties at the k-th value: keeping all tied tokens (logits < kth) or exactly k of them are both fine
    logits = torch.tensor([[2.0, 1.0, 1.0, 0.0, -1.0, 1.0], [0.5, 0.5, 0.5, 0.5, 3.0, -2.0]])
    got = _top_k_result(fn, logits, 2)
    kth = torch.topk(logits, 2, dim=-1).values[..., -1:]
    kept = torch.isfinite(got)
    expect(
        bool(kept[logits > kth].all()) and not bool(kept[logits < kth].any()),
        f"with tied logits {logits[0].tolist()} and k=2 keep every logit above the 2nd largest value and none "
        "below it",
    )
    expect(
        all(2 <= n <= m for n, m in zip(kept.sum(-1).tolist(), (logits >= kth).sum(-1).tolist())),
        "with ties at the k-th value keep either exactly k logits or all of those tied with the k-th",
    )
    expect(torch.equal(got[kept], logits[kept]), "the kept logits must be unchanged (no rescaling, no softmax)")


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


def _window_losses(model, tokens: torch.Tensor, block_size: int, stride: int, shift: bool = True) -> list:
    """Per-window token losses (reduction='none') of windows starting at 0, stride, 2 * stride, ..."""
    out = []
    with torch.no_grad():
        for i in range(0, len(tokens) - 1, stride):
            chunk = tokens[i : i + block_size + 1]
            if len(chunk) < 2:
                continue
            logits, _ = model(chunk[None, :-1])  # (1, t, V)
            target = chunk[1:] if shift else chunk[:-1]
            out.append(F.cross_entropy(logits[0], target, reduction="none"))
    return out


def _ref_perplexity(model, tokens: torch.Tensor, block_size: int) -> float:
    return math.exp(torch.cat(_window_losses(model, tokens, block_size, block_size)).mean().item())


def _perplexity_mistakes(model, tokens: torch.Tensor, T: int) -> list[tuple[float, str]]:
    N = len(tokens)
    losses = _window_losses(model, tokens, T, T)
    flat = torch.cat(losses)
    loss = flat.mean().item()
    full = [w for w in losses if len(w) == T]
    return [
        (loss, f"you returned the mean loss ({loss:.4f}); perplexity is exp(loss) = {math.exp(loss):.3f}"),
        (2**loss, "you used 2 ** loss: cross-entropy is in nats (natural log), so perplexity is math.exp(loss)"),
        (math.exp(flat.sum().item()), "you took exp of the SUMMED loss: divide the sum by the number of "
         "predictions first (perplexity is exp of the MEAN loss)"),
        (math.exp(torch.stack([w.mean() for w in losses]).mean().item()),
         "you averaged the per-window mean losses, so the short last window counts as much as a full one: sum "
         "the losses of all windows (reduction='sum') and divide by the total number of predictions, N - 1"),
        (math.exp(torch.cat(full).mean().item()) if full else math.nan,
         "you dropped the last, shorter window: every one of the N - 1 predictions must count, so score the "
         "tail too (its input is tokens[i : N - 1], its targets tokens[i + 1 : N])"),
        (math.exp(flat.sum().item() / N), f"you divided by N = {N}: there are N - 1 = {N - 1} predictions "
         "(the first token has nothing before it)"),
        (math.exp(torch.cat(_window_losses(model, tokens, T, T, shift=False)).mean().item()),
         "your targets are the inputs themselves: the logits at position t predict the NEXT token, so the "
         "targets of window i are tokens[i + 1 : i + block_size + 1]"),
        (math.exp(torch.cat(_window_losses(model, tokens, T, T + 1)).mean().item()),
         "your windows start block_size + 1 apart, so the token at each window boundary is never predicted: "
         "start the windows at 0, block_size, 2 * block_size, ..."),
    ]


@checker("07.4 perplexity on a token sequence")
def check_perplexity(fn) -> None:
    """fn(model, tokens (N,), block_size) -> float: exp of the mean loss over all N - 1 predictions."""
    for N, T, seed in [(50, 16, 1), (65, 16, 0), (33, 8, 2), (30, 8, 4)]:
        model = _tiny_model(11, T, seed)
        tokens = torch.randint(11, (N,), generator=torch.Generator().manual_seed(seed))
        got = fn(model, tokens.clone(), T)
        if isinstance(got, torch.Tensor):
            expect(got.numel() == 1, f"return one number, got a tensor of shape {tuple(got.shape)}")
            got = got.item()
        expect(isinstance(got, int | float), f"return a float, got {type(got).__name__}")
        want = _ref_perplexity(model, tokens, T)
        if math.isclose(got, want, rel_tol=1e-4):
            continue
        for value, message in _perplexity_mistakes(model, tokens, T):
            if math.isclose(got, value, rel_tol=1e-4) and not math.isclose(value, want, rel_tol=1e-3):
                expect(False, f"with {N} tokens and block_size {T}: {message}")
        expect(
            False,
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


@torch.no_grad()
def _beam_mistake(model, idx: torch.Tensor, n: int, W: int, mistake: str) -> torch.Tensor:
    """Beam search done wrong in one named way (what a student's code returns for that mistake)."""
    beams = idx.repeat(W, 1) if mistake == "copies" else idx
    scores = torch.zeros(beams.size(0))
    for _ in range(n):
        logits = model(beams)[0][:, -1].float()
        logp = {"raw logits": logits, "probabilities": logits.softmax(-1)}.get(mistake, logits.log_softmax(-1))
        V = logp.size(-1)
        if mistake == "own best":  # each beam only ever follows its own best token
            if beams.size(0) == 1:
                top, ix = torch.topk(logp.flatten(), min(W, V))
            else:
                best = logp.max(-1)
                top, ix = scores + best.values, torch.arange(beams.size(0)) * V + best.indices
        else:
            base = 0 if mistake == "last token" else scores[:, None]
            top, ix = torch.topk((base + logp).flatten(), min(W, logp.numel()))
        rows = torch.arange(len(ix)) % beams.size(0) if mistake == "no reorder" else ix // V
        beams, scores = torch.cat([beams[rows], (ix % V)[:, None]], dim=1), top
    if mistake == "last beam":
        return beams[-1:]
    return beams[scores.argmax()][None]


_BEAM_MISTAKES = {
    "last token": "you ranked the candidates by the log-probability of the new token only: a beam's score is "
    "the SUM of the log-probabilities of all its tokens (add the beam's running score to every candidate)",
    "raw logits": "you added raw logits: turn them into log-probabilities first (F.log_softmax over the "
    "vocabulary), or every beam's scores are on a different scale",
    "probabilities": "you added probabilities: a sequence's probability is the PRODUCT of its token "
    "probabilities, so add LOG-probabilities (F.log_softmax)",
    "no reorder": "the new tokens were appended to the wrong beams: candidate j of the flattened (W * V) scores "
    "continues beam j // V with token j % V, so select beams[ix // V] before appending",
    "own best": "each beam was only extended by its own best token: score every (beam, next token) pair and "
    "keep the best beam_width of all of them, so a good beam can branch into several",
    "copies": "you started from beam_width copies of the prompt, so the first step picks the same token in "
    "every copy and the beams stay duplicates: start from the prompt alone (one beam, score 0)",
    "last beam": "you returned the last beam: return the one with the HIGHEST total log-probability",
}


def _beam_named(model, prompt, n: int, W: int, got: torch.Tensor, want: torch.Tensor) -> None:
    """If got is what one of the named mistakes returns (and the right answer is not), say which."""
    with torch.no_grad():
        greedy = prompt
        for _ in range(n):
            greedy = torch.cat([greedy, model(greedy)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    matches = []
    for mistake, message in _BEAM_MISTAKES.items():
        wrong = _beam_mistake(model, prompt, n, W, mistake)
        if wrong.shape == got.shape and torch.equal(got, wrong) and not torch.equal(wrong, want):
            matches.append(message)
    if W > 1 and torch.equal(got, greedy) and not torch.equal(want, greedy):
        cause = " Possible cause: " + " Or: ".join(matches) if matches else ""
        expect(False, f"with beam_width={W} you returned the greedy continuation: keep the {W} best sequences "
               f"at every step, not only the best one.{cause}")
    if matches:
        expect(False, f"beam width {W}: {matches[0]}")


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
    if not torch.equal(got, best):
        _beam_named(model, prompt, 3, 16, got, best)
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
    expect(isinstance(got, torch.Tensor) and tuple(got.shape) == (1, 9),
           f"return the prompt plus 6 new tokens, shape (1, 9); got {tuple(getattr(got, 'shape', ()))}")
    expect(torch.equal(got, seq), "beam_width=1 must be greedy decoding (the argmax token at every step)")
    # 3. the library's beam search on a few models and widths
    for seed, width in [(5, 2), (9, 3), (10, 2), (13, 4), (1, 3), (2, 4)]:
        model = _tiny_model(9, 32, seed)
        prompt = torch.tensor([[seed % 9, 1]])
        got = fn(model, prompt.clone(), 8, width)
        expect(isinstance(got, torch.Tensor) and tuple(got.shape) == (1, 10),
               f"return the prompt plus 8 new tokens, shape (1, 10); got {tuple(getattr(got, 'shape', ()))}")
        want = beam_search(model, prompt, 8, beam_width=width)
        if not torch.equal(got, want):
            _beam_named(model, prompt, 8, width, got, want)
        expect(
            torch.equal(got, want),
            f"beam width {width}, 8 new tokens: expected {want[0].tolist()}, got {got[0].tolist()}. Keep the "
            f"{width} best sequences by total log-probability at every step and return the best one at the end",
        )
