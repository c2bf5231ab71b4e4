"""Turning next-token probabilities into text: greedy, temperature, top-k, top-p, beam search.

Works with any :class:`~minigpt.contract.LanguageModel`: ``model(idx) -> (logits, loss)`` with
``config.block_size``. Models whose ``forward`` takes a ``last_only`` keyword are asked for the last
position's logits only; models that also offer ``new_kv_cache`` (:class:`~minigpt.contract.CachedLanguageModel`)
are decoded incrementally. Past the block size the context is cropped to the last ``block_size`` tokens,
exactly as without a cache, so cached and uncached decoding produce the same tokens.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .attention import KVCache
from .contract import CachedLanguageModel, LanguageModel

__all__ = [
    "validate_sampling",
    "filter_top_k",
    "filter_top_p",
    "apply_repetition_penalty",
    "sample_next",
    "NextTokenLogits",
    "stream",
    "generate",
    "beam_search",
]


def validate_sampling(
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
) -> None:
    """Raise ValueError with the fix for settings that have no meaning.

    Any finite temperature > 0 and top_p in (0, 1] is valid: `sample_next` stays finite however small
    they are (a temperature so small that logits / temperature overflows samples the likeliest token,
    its limit; a top_p below the top token's probability keeps only that token).
    """
    if (not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0
            or not math.isfinite(temperature)):
        raise ValueError(
            f"temperature must be > 0, got {temperature!r}. Use greedy=True for deterministic output "
            "(the limit of temperature -> 0), 0.3-0.8 for focused text, 1.0 for the model's distribution."
        )
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 (or None to disable), got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, (int, float)) or not (0.0 < top_p <= 1.0)):
        raise ValueError(f"top_p must be in (0, 1] (or None to disable), got {top_p!r}; 0.9 is a common choice")
    if not isinstance(repetition_penalty, (int, float)) or not (0 < repetition_penalty < math.inf):
        raise ValueError(f"repetition_penalty must be > 0 (1.0 = off), got {repetition_penalty!r}")


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row, set the rest to -inf."""
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al., 2020): keep the smallest set of tokens whose probability sums to >= p.

    Counted from the least likely token up, as Hugging Face's ``TopPLogitsWarper`` does: a token is dropped
    when it and every less likely token together hold at most 1 - p. Summing from the top instead reaches
    1.0 in float32 before the tail is counted, so p = 1 could drop tokens that have probability; from the
    bottom, p = 1 drops only tokens whose probability is exactly 0. The most likely token always survives.
    """
    sorted_logits, order = torch.sort(logits, descending=False, dim=-1)  # (..., V), least likely first
    tail_mass = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = tail_mass <= 1.0 - p
    drop_sorted[..., -1] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def apply_repetition_penalty(logits: torch.Tensor, idx: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty (Keskar et al., 2019): make tokens already in the context less likely."""
    if penalty == 1.0:
        return logits
    seen = torch.gather(logits, -1, idx)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(-1, idx, seen)


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row from (B, V) logits; returns (B, 1)."""
    if greedy:
        return logits.argmax(dim=-1, keepdim=True)
    scaled = logits.float() / temperature
    if not bool(torch.isfinite(scaled).all()):  # a tiny temperature overflowed: put the best token at 0 first,
        logits = logits.float() - logits.float().amax(dim=-1, keepdim=True)  # so (x - max) / t is 0 or -inf
        t = max(temperature, torch.finfo(torch.float32).tiny)  # a python float below float32's range is 0
        scaled = (logits / t).nan_to_num(nan=float("-inf"), posinf=0.0)
    logits = scaled
    if top_k is not None:
        logits = filter_top_k(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = filter_top_p(logits, top_p)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def _takes_keyword(model: Any, name: str) -> bool:
    """Whether the model's forward accepts the keyword ``name`` (explicitly, not through **kwargs)."""
    try:
        params = inspect.signature(getattr(model, "forward", model)).parameters
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return False
    return name in params


class NextTokenLogits:
    """Next-token logits for a growing context, reusing a KV cache while the context fits the block."""

    def __init__(self, model: LanguageModel, use_cache: bool) -> None:
        self.model = model
        # the optional keywords (last_only, kv_cache) are checked here at run time, so call untyped
        self._forward: Callable[..., tuple[torch.Tensor, Any]] = model
        self.block_size = model.config.block_size
        self.cached_model = model if use_cache and isinstance(model, CachedLanguageModel) else None
        self.use_cache = self.cached_model is not None
        # only ask for the last position when the model understands the request (the rest is wasted work)
        self.extra = {"last_only": True} if _takes_keyword(model, "last_only") else {}
        self.cache: KVCache | None = None

    def __call__(self, idx: torch.Tensor, n_new: int | None) -> torch.Tensor:
        """idx (B, T) is the whole context; n_new tokens at its end are new since the last call."""
        # inference mode skips the autograd bookkeeping every op (and every view) otherwise pays even
        # under no_grad: ~13% faster token by token. The logits it returns may be read, not written.
        with torch.inference_mode():
            return self._next(idx, n_new)

    def _next(self, idx: torch.Tensor, n_new: int | None) -> torch.Tensor:
        if self.cached_model is None:
            logits, _ = self._forward(idx[:, -self.block_size :], **self.extra)
            return logits[:, -1, :]
        if self.cache is None or self.cache.batch_size != idx.size(0):
            self.cache = self.cached_model.new_kv_cache(idx.size(0))
            n_new = None
        if n_new is None or self.cache.pos + n_new > self.block_size:
            # (re)fill the cache with the cropped context: the same tokens the uncached path would see
            self.cache.reset()
            feed = idx[:, -self.block_size :]
        else:
            feed = idx[:, -n_new:]
        logits, _ = self._forward(feed, kv_cache=self.cache, **self.extra)
        return logits[:, -1, :]


def _generator_for(idx: torch.Tensor, seed: int | None, generator: torch.Generator | None):
    if generator is not None:
        return generator
    if seed is None:
        return None
    return torch.Generator(device=idx.device).manual_seed(seed)


def _normalise_stops(stop_ids) -> list[list[int]]:
    if stop_ids is None:
        return []
    if len(stop_ids) and isinstance(stop_ids[0], int):
        return [list(stop_ids)]
    return [list(s) for s in stop_ids if len(s)]


def _check_prompt(idx: torch.Tensor) -> None:
    if idx.dim() != 2:
        raise ValueError(f"the prompt must be a (B, T) tensor of token ids, got shape {tuple(idx.shape)}")
    if idx.size(1) == 0:
        raise ValueError(
            "the prompt is empty: give at least one token (for a character model, e.g. a newline '\\n')"
        )


@torch.no_grad()
def stream(
    model,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    repetition_penalty: float = 1.0,
    use_cache: bool = True,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    stop_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the new tokens one step at a time, each as a (B, 1) tensor.

    Stops early once every row has produced one of the ``stop_ids`` sequences (the stop tokens are
    yielded). ``seed`` makes sampling reproducible without touching the global RNG.
    """
    _check_prompt(idx)
    if not greedy:
        validate_sampling(temperature, top_k, top_p, repetition_penalty)
    else:  # the penalty changes greedy output too
        validate_sampling(repetition_penalty=repetition_penalty)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    g = _generator_for(idx, seed, generator)
    stops = _normalise_stops(stop_ids)
    was_training = model.training
    model.eval()
    next_logits = NextTokenLogits(model, use_cache)
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    n_new = None
    try:
        for _ in range(max_new_tokens):
            logits = next_logits(idx, n_new)
            logits = apply_repetition_penalty(logits, idx, repetition_penalty)
            nxt = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                              generator=g)
            idx = torch.cat([idx, nxt], dim=1)
            n_new = 1
            yield nxt
            if stops:
                for s in stops:
                    if idx.size(1) >= len(s):
                        tail = idx[:, -len(s):]
                        done |= (tail == torch.tensor(s, device=idx.device)).all(dim=1)
                if bool(done.all()):
                    break
    finally:
        model.train(was_training)


@torch.no_grad()
def generate(model, idx: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
    """Return the prompt followed by up to ``max_new_tokens`` new tokens, (B, T + n).

    Options (all keyword): temperature, top_k, top_p, greedy, repetition_penalty, use_cache, seed,
    generator, stop_ids -- see :func:`stream`.
    """
    new = list(stream(model, idx, max_new_tokens, **kwargs))
    return torch.cat([idx, *new], dim=1) if new else idx


def _check_beam_args(idx: torch.Tensor, beam_width: int) -> None:
    _check_prompt(idx)
    if idx.size(0) != 1:
        raise ValueError("beam_search decodes one prompt at a time: pass idx of shape (1, T)")
    if not isinstance(beam_width, int) or beam_width < 1:
        raise ValueError(f"beam_width must be an integer >= 1, got {beam_width!r}")


def _ends(tok: torch.Tensor, eos_id: int | None, last: bool) -> torch.Tensor:
    """Which candidates finish: those ending in the end token, or all of them at the last step."""
    if last:
        return torch.ones_like(tok, dtype=torch.bool)
    return tok == eos_id if eos_id is not None else torch.zeros_like(tok, dtype=torch.bool)


@torch.no_grad()
def beam_search(
    model: LanguageModel,
    idx: torch.Tensor,
    max_new_tokens: int,
    beam_width: int = 4,
    length_penalty: float = 1.0,
    use_cache: bool = True,
    eos_id: int | None = None,
) -> torch.Tensor:
    """The most probable continuation of a single prompt (1, T) that beam search finds; returns (1, T + n).

    Hugging Face's ``generate(num_beams=beam_width, eos_token_id=eos_id, length_penalty=...)`` step by
    step: every step extends the ``beam_width`` live beams by every token and ranks the candidates by
    summed log-probability. A candidate ending in ``eos_id`` among the best ``beam_width`` leaves the live
    set for a pool of finished hypotheses, scored ``sum log p / n**length_penalty`` (n = new tokens,
    the end token included); the live set is refilled from the next best candidates that do not end
    there. At ``max_new_tokens`` the best live beams join the pool too. Decoding stops early once the pool
    holds ``beam_width`` hypotheses and the best live beam, scored at its current length, is no better
    than the worst of them (HF's default ``early_stopping=False``). Ties fall as ``torch.topk`` orders
    them, as in HF. Beam width 1 without an end token is greedy decoding.
    """
    _check_beam_args(idx, beam_width)
    if max_new_tokens < 1:
        return idx
    W = beam_width
    was_training = model.training
    model.eval()
    next_logits = NextTokenLogits(model, use_cache)
    beams = idx  # (live, T + step): a single live beam until the first step fans out
    scores = torch.zeros(1, device=idx.device)  # summed log-probabilities of the live beams
    finished: list[tuple[float, torch.Tensor]] = []  # (length-penalised score, (1, T + n)), best first
    n_new = None
    try:
        for step in range(max_new_tokens):
            n = step + 1  # new tokens in every candidate of this step
            logp = F.log_softmax(next_logits(beams, n_new).float(), dim=-1)  # (live, V)
            V = logp.size(-1)
            cand = (scores.unsqueeze(1) + logp).view(-1)  # (live * V,)
            # 2W candidates: even if W of them end here, W others remain to stay live
            top_scores, top_ix = torch.topk(cand, min(2 * W, cand.numel()))
            beam_ix, tok = top_ix // V, top_ix % V
            seqs = torch.cat([beams.index_select(0, beam_ix), tok.unsqueeze(1)], dim=1)  # (2W, T + n)
            ends = _ends(tok, eos_id, last=n == max_new_tokens)  # (2W,) candidates that finish here
            # only the best W candidates may finish; an end token ranked lower is simply dropped
            for i in ends[:W].nonzero().flatten().tolist():
                finished.append((float(top_scores[i] / n**length_penalty), seqs[i : i + 1]))
            finished = sorted(finished, key=lambda h: -h[0])[:W]
            live = (~ends).nonzero().flatten()[:W]
            if live.numel() == 0:
                break
            beams, scores = seqs[live], top_scores[live]
            if next_logits.cache is not None:
                next_logits.cache.reorder(beam_ix[live])
            n_new = 1
            # HF's stopping heuristic: can the best live beam (scores are sorted) still beat the pool?
            if len(finished) == W and float(scores[0] / n**length_penalty) <= finished[-1][0]:
                break
    finally:
        model.train(was_training)
    return finished[0][1]
