"""Language models without attention, for the course's "why attention?" comparison.

Both follow the GPT contract ``forward(idx, targets=None) -> (logits, loss)`` and carry a
``config.block_size``, so the same trainer, generator and checkpoint code handles them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import count_parameters

__all__ = ["BigramConfig", "BigramLM", "MLPConfig", "MLPLM"]


def _loss(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor | None:
    if targets is None:
        return None
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)


@dataclass
class BigramConfig:
    vocab_size: int = 65  # tokens
    block_size: int = 1  # a bigram model only ever looks at the previous token

    def to_dict(self) -> dict:
        return asdict(self)


class BigramLM(nn.Module):
    """Next token from the current token alone: a (V, V) table of logits."""

    def __init__(self, config: BigramConfig | int) -> None:
        super().__init__()
        self.config = BigramConfig(vocab_size=config) if isinstance(config, int) else config
        self.table = nn.Embedding(self.config.vocab_size, self.config.vocab_size)
        nn.init.zeros_(self.table.weight)  # start from the uniform distribution, loss = ln(V)

    def forward(self, idx, targets=None, *, last_only: bool = False, kv_cache=None):
        if last_only:
            idx = idx[:, -1:]
        logits = self.table(idx)  # (B, T, V)
        return logits, _loss(logits, targets)

    def num_params(self) -> int:
        return count_parameters(self)[1]


@dataclass
class MLPConfig:
    vocab_size: int = 65  # tokens
    context: int = 8  # how many previous tokens the MLP reads (Bengio et al., 2003)
    n_embd: int = 32  # width of each token embedding
    hidden: int = 256  # hidden layer width

    @property
    def block_size(self) -> int:
        return self.context

    def to_dict(self) -> dict:
        return asdict(self)


class MLPLM(nn.Module):
    """Concatenate the embeddings of the last ``context`` tokens and predict the next with an MLP.

    Its window is fixed: it cannot weigh a far token more than a near one, which is the gap attention fills.
    """

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = c = config
        self.wte = nn.Embedding(c.vocab_size + 1, c.n_embd)  # row V pads positions before the text starts
        self.mlp = nn.Sequential(
            nn.Linear(c.context * c.n_embd, c.hidden), nn.Tanh(), nn.Linear(c.hidden, c.vocab_size)
        )

    def forward(self, idx, targets=None, *, last_only: bool = False, kv_cache=None):
        c = self.config
        B, T = idx.shape
        padded = F.pad(idx, (c.context - 1, 0), value=c.vocab_size)  # (B, T + context - 1)
        windows = padded.unfold(1, c.context, 1)  # (B, T, context): tokens up to and including t
        if last_only:
            windows = windows[:, -1:]
        x = self.wte(windows).flatten(2)  # (B, T, context * n_embd)
        logits = self.mlp(x)  # (B, T, V)
        return logits, _loss(logits, targets)

    def num_params(self) -> int:
        return count_parameters(self)[1]
