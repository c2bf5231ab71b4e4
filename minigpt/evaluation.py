"""A small evaluation harness: held-out perplexity and bits per byte, exact match, multiple choice.

How benchmark harnesses (EleutherAI's lm-evaluation-harness, OpenAI's simple-evals) score a model:
- **perplexity / bits per byte** on held-out text: exp(mean nats per token), and the total nats divided by
  ln 2 and by the text's UTF-8 bytes (comparable across tokenizers, unlike perplexity);
- **exact match**: greedy-decode an answer and compare it, whitespace stripped, with the true one;
- **multiple choice**: no generation at all; each option's log-likelihood given the prompt is summed
  over its tokens and the highest wins (a sum favours short options; harnesses also report a
  length-normalised variant).

Everything runs under ``torch.no_grad()`` in eval mode, in batches, with a tqdm bar (``progress=False``
turns it off). Prompts of equal length are decoded together, so no padding shifts any position.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .generation import generate

__all__ = ["heldout_loss", "bits_per_byte", "greedy_answers", "exact_match", "option_logprobs", "multiple_choice"]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def heldout_loss(model: nn.Module, data: torch.Tensor, block_size: int, batch_size: int = 32,
                 progress: bool = True) -> tuple[float, int]:
    """(total nats, tokens predicted) over held-out ids.

    ``data`` 1-D: one stream cut into non-overlapping windows of ``block_size``. ``data`` 2-D (N, L): one
    document per row, right-padded with -1, each row predicted from its own first token on (L - 1 at most
    ``block_size``): for a model trained on rows that start at a document's start.
    """
    was = model.training
    model.eval()
    if data.dim() == 1:
        n = (len(data) - 1) // block_size
        x, y = data[: n * block_size].view(n, block_size), data[1 : n * block_size + 1].view(n, block_size)
    else:
        x, y = data[:, :-1].clamp(min=0), data[:, 1:]  # (N, L - 1): pad positions read token 0, score nothing
    total = 0.0
    for i in tqdm(range(0, len(x), batch_size), desc="held-out loss", disable=not progress, leave=False):
        logits, _ = model(x[i : i + batch_size].to(_device(model)))
        total += F.cross_entropy(logits.flatten(0, 1).float(), y[i : i + batch_size].flatten().to(logits.device),
                                 ignore_index=-1, reduction="sum").item()
    model.train(was)
    return total, int((y != -1).sum())


def bits_per_byte(total_nats: float, n_bytes: int) -> float:
    """Total nats over a text, in bits, per UTF-8 byte of that text."""
    return total_nats / math.log(2) / n_bytes


@torch.no_grad()
def greedy_answers(model: nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_id: int,
                   batch_size: int = 64, progress: bool = True) -> list[list[int]]:
    """Greedy continuation of every prompt, cut before the first ``stop_id``; in input order."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_length[len(p)].append(i)
    chunks = [idx[j : j + batch_size] for idx in by_length.values() for j in range(0, len(idx), batch_size)]
    out: list[list[int]] = [[] for _ in prompts]
    device = _device(model)
    for chunk in tqdm(chunks, desc="greedy decode", disable=not progress, leave=False):
        idx = torch.tensor([list(prompts[i]) for i in chunk], device=device)
        new = generate(model, idx, max_new_tokens, greedy=True)[:, idx.size(1):].tolist()
        for i, row in zip(chunk, new, strict=True):
            out[i] = row[: row.index(stop_id)] if stop_id in row else row
    return out


def exact_match(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Fraction of predictions equal to their answer once surrounding whitespace is stripped."""
    if len(predictions) != len(answers) or not answers:
        raise ValueError(f"need as many predictions as answers (>0), got {len(predictions)} and {len(answers)}")
    return sum(p.strip() == a.strip() for p, a in zip(predictions, answers, strict=True)) / len(answers)


@torch.no_grad()
def option_logprobs(model: nn.Module, prompt: Sequence[int], options: Sequence[Sequence[int]]) -> list[float]:
    """Summed log-probability of each option's tokens following ``prompt``, in one padded batch."""
    was = model.training
    model.eval()
    seqs = [list(prompt) + list(o) for o in options]
    T = max(len(s) for s in seqs) - 1
    x = torch.zeros(len(seqs), T, dtype=torch.long)
    y = torch.full((len(seqs), T), -1, dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, : len(s) - 1] = torch.tensor(s[:-1])
        y[i, len(prompt) - 1 : len(s) - 1] = torch.tensor(s[len(prompt):])  # the option's tokens only
    logits, _ = model(x.to(_device(model)))
    logp = F.log_softmax(logits.float(), dim=-1).cpu()  # (B, T, V)
    picked = logp.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (y != -1)
    model.train(was)
    return picked.sum(-1).tolist()


def multiple_choice(model: nn.Module, items: Sequence[tuple[Sequence[int], Sequence[Sequence[int]], int]],
                    progress: bool = True) -> float:
    """Accuracy over (prompt ids, option ids, index of the right option): the highest summed log-likelihood wins."""
    right = 0
    for prompt, options, answer in tqdm(items, desc="multiple choice", disable=not progress, leave=False):
        scores = option_logprobs(model, prompt, options)
        right += max(range(len(scores)), key=scores.__getitem__) == answer
    return right / len(items)
