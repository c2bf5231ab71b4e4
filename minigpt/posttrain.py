"""Post-training pieces: a chat format, supervised fine-tuning (SFT), DPO and GRPO, in plain torch.

- SFT: special tokens added to a tokenizer and to the model (:func:`resize_token_embeddings` keeps the old
  rows), the loss on the response tokens only (:func:`response_targets`), padding vs packing.
- DPO (Rafailov et al., 2023, "Direct Preference Optimization"): :func:`dpo_loss` on summed sequence
  log-probabilities (:func:`sequence_logprobs`) under the policy and a frozen reference. Same formula as
  TRL's ``DPOTrainer`` with ``loss_type="sigmoid"``.
- GRPO (Shao et al., 2024, "DeepSeekMath"): :func:`group_advantages` (rewards normalised within each group
  of answers to one prompt) and :func:`grpo_loss` (PPO's clipped ratio plus a KL penalty to the reference,
  each answer's tokens averaged, then the answers).

Shapes: B sequences, T positions, V vocabulary, N prompts, G answers per prompt. Targets use -1 for
"no loss here", as everywhere in minigpt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .tokenizer import CharTokenizer

__all__ = [
    "ChatTokenizer",
    "resize_token_embeddings",
    "response_targets",
    "pad_batch",
    "pack_batch",
    "token_logprobs",
    "sequence_logprobs",
    "dpo_loss",
    "group_advantages",
    "grpo_loss",
]

IGNORE = -1


class ChatTokenizer:
    """A :class:`CharTokenizer` plus whole-word special tokens (``<|user|>``) with ids after the characters.

    The old ids do not move, so a model trained on the characters keeps its meaning for them; the new
    ids need new embedding rows (:func:`resize_token_embeddings`).
    """

    def __init__(self, base: CharTokenizer, specials: Sequence[str]) -> None:
        if len(set(specials)) != len(specials) or any(len(s) < 2 for s in specials):
            raise ValueError(f"special tokens must be distinct and longer than one character, got {list(specials)}")
        self.base = base
        self.specials = list(specials)
        self.special_ids = {s: base.vocab_size + i for i, s in enumerate(self.specials)}

    @property
    def vocab_size(self) -> int:
        return self.base.vocab_size + len(self.specials)

    def __getitem__(self, special: str) -> int:
        return self.special_ids[special]

    def encode(self, text: str) -> list[int]:
        """Characters through the base tokenizer; a special token's text becomes its one id."""
        ids: list[int] = []
        i = 0
        while i < len(text):
            hit = next((s for s in self.specials if text.startswith(s, i)), None)
            if hit is None:
                j = min((k for s in self.specials if (k := text.find(s, i)) >= 0), default=len(text))
                ids += self.base.encode(text[i:j])
                i = j
            else:
                ids.append(self.special_ids[hit])
                i += len(hit)
        return ids

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        n = self.base.vocab_size
        return "".join(self.specials[i - n] if i >= n else self.base.decode([i]) for i in ids)


@torch.no_grad()
def resize_token_embeddings(model: Any, vocab_size: int) -> Any:
    """Grow a GPT's token embedding (and its output layer) to ``vocab_size`` rows, in place.

    Old rows are copied unchanged, so every old token's logits stay the same; new rows start at the mean
    of the old embeddings (Hewitt, 2021: a new token then gets an average logit instead of a random
    one that could dominate). A tied output layer stays tied; ``model.config.vocab_size`` is updated.
    """
    old = model.transformer.wte
    n_old, C = old.weight.shape
    if vocab_size < n_old:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the current {n_old}; this only adds rows")
    new = nn.Embedding(vocab_size, C, device=old.weight.device, dtype=old.weight.dtype)
    new.weight[:n_old] = old.weight
    new.weight[n_old:] = old.weight.mean(dim=0)
    model.transformer.wte = new
    tied = model.lm_head.weight is old.weight
    if tied:
        model.lm_head.weight = new.weight
    else:
        head = nn.Linear(C, vocab_size, bias=False, device=new.weight.device, dtype=new.weight.dtype)
        head.weight[:n_old] = model.lm_head.weight
        head.weight[n_old:] = model.lm_head.weight.mean(dim=0)
        model.lm_head = head
    model.config.vocab_size = vocab_size
    return model


def response_targets(prompt_ids: Sequence[int], response_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) for one SFT example: y[t] is the token after x[t], -1 wherever that token is in the prompt.

    With P prompt tokens, y[P - 1] is the first response token (predicted from the prompt's last token),
    so exactly the first P - 1 targets are ignored.
    """
    ids = torch.tensor(list(prompt_ids) + list(response_ids), dtype=torch.long)
    x, y = ids[:-1].clone(), ids[1:].clone()
    y[: len(prompt_ids) - 1] = IGNORE
    return x, y


def pad_batch(examples: Sequence[tuple[torch.Tensor, torch.Tensor]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One row per example, right-padded to the longest: pad_id in x, -1 in y (no loss on padding)."""
    T = max(len(x) for x, _ in examples)
    X = torch.full((len(examples), T), pad_id, dtype=torch.long)
    Y = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    for i, (x, y) in enumerate(examples):
        X[i, : len(x)], Y[i, : len(y)] = x, y
    return X, Y


def pack_batch(
    examples: Sequence[tuple[torch.Tensor, torch.Tensor]], block_size: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Examples laid end to end and cut into rows of ``block_size``; only the last row is padded.

    Nothing stops attention from reading the previous example inside a row (that needs a block-diagonal
    mask); with an end token closing every example the model learns to ignore what came before.
    """
    x = torch.cat([x for x, _ in examples])
    y = torch.cat([y for _, y in examples])
    n_rows = math.ceil(len(x) / block_size)
    X = torch.full((n_rows * block_size,), pad_id, dtype=torch.long)
    Y = torch.full((n_rows * block_size,), IGNORE, dtype=torch.long)
    X[: len(x)], Y[: len(y)] = x, y
    return X.view(n_rows, block_size), Y.view(n_rows, block_size)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at every position, (B, T), and 0 where the target is -1."""
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    keep = targets != IGNORE
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked * keep


def sequence_logprobs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum of log p(y[t] | x[:t+1]) over the positions with a target, one number per row, (B,)."""
    logits, _ = model(x)
    return token_logprobs(logits, y).sum(dim=-1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO's loss, -log sigmoid(beta * [(pc - rc) - (pr - rr)]) averaged over pairs, and the implicit
    rewards beta * (policy - reference) of the chosen and the rejected answers (detached), all (B,) inputs
    being summed sequence log-probabilities."""
    chosen = policy_chosen - ref_chosen
    rejected = policy_rejected - ref_rejected
    loss = -F.logsigmoid(beta * (chosen - rejected)).mean()
    return loss, beta * chosen.detach(), beta * rejected.detach()


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """(r - mean of its group) / (std of its group + eps), for rewards laid out prompt by prompt, (N * G,).

    The std is torch's default (unbiased), as in TRL's ``GRPOTrainer``; a group whose answers all got the
    same reward gets advantage 0 (nothing to learn from it).
    """
    r = rewards.float().view(-1, group_size)  # (N, G)
    adv = (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, keepdim=True) + eps)
    return adv.view(-1)


def grpo_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    logp_ref: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    beta: float = 0.04,
) -> torch.Tensor:
    """GRPO's loss from per-token log-probs (B, T) of the sampled answers under the policy being trained,
    the policy that sampled them and the reference, per-answer advantages (B,) and a 0/1 answer mask (B, T).

    Per token: -(min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) - beta * KL), ratio = exp(logp - logp_old),
    KL = exp(ref - logp) - (ref - logp) - 1 (Schulman's k3 estimator, >= 0). Averaged over each answer's
    tokens, then over answers.
    """
    ratio = torch.exp(logp - logp_old)
    A = advantages.unsqueeze(-1)  # (B, 1)
    surrogate = torch.min(ratio * A, ratio.clamp(1 - clip_eps, 1 + clip_eps) * A)
    kl = torch.exp(logp_ref - logp) - (logp_ref - logp) - 1
    per_token = -(surrogate - beta * kl)
    mask = mask.float()
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
