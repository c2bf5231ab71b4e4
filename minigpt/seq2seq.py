"""The original encoder-decoder Transformer (Vaswani et al., 2017), sized for toy sequence tasks.

The encoder reads the whole source bidirectionally; the decoder writes the target one token at a time,
attending causally to what it has written and, through cross-attention, to the encoder's output.
Shapes: B batch, S source length, T target length, C d_model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import padding_mask
from .blocks import DecoderBlock, TransformerBlock, make_norm
from .model import count_parameters
from .positional import SinusoidalPositionalEncoding

__all__ = ["TransformerConfig", "Transformer"]


@dataclass
class TransformerConfig:
    src_vocab_size: int = 12  # source tokens (toy tasks: PAD, BOS and the symbols)
    tgt_vocab_size: int = 12  # target tokens
    d_model: int = 64  # model width
    n_head: int = 4  # attention heads
    n_encoder_layers: int = 2  # encoder blocks
    n_decoder_layers: int = 2  # decoder blocks
    d_ff: int = 256  # feed-forward hidden width
    dropout: float = 0.0  # dropout everywhere
    max_len: int = 128  # longest source or target sequence
    prenorm: bool = True  # pre-LN trains more easily; the paper used post-LN
    activation: str = "relu"  # the paper's choice
    norm: str = "layernorm"
    pad_id: int = 0  # source padding token, masked out of attention

    def __post_init__(self) -> None:
        if self.d_model % self.n_head != 0:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")

    @property
    def block_size(self) -> int:
        return self.max_len

    def to_dict(self) -> dict:
        return asdict(self)


class Transformer(nn.Module):
    """Encoder-decoder with sinusoidal positions; ``forward(src, tgt_in, targets=None) -> (logits, loss)``."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = c = config
        self.src_emb = nn.Embedding(c.src_vocab_size, c.d_model)
        self.tgt_emb = nn.Embedding(c.tgt_vocab_size, c.d_model)
        self.pos = SinusoidalPositionalEncoding(c.d_model, c.max_len)
        self.drop = nn.Dropout(c.dropout)
        self.encoder = nn.ModuleList(
            TransformerBlock(c.d_model, c.n_head, c.d_ff, c.dropout, c.activation, c.norm, c.prenorm)
            for _ in range(c.n_encoder_layers)
        )
        self.decoder = nn.ModuleList(
            DecoderBlock(c.d_model, c.n_head, c.d_ff, c.dropout, c.activation, c.norm, c.prenorm)
            for _ in range(c.n_decoder_layers)
        )
        # pre-LN stacks need a final norm; post-LN blocks already end normalised
        self.enc_ln = make_norm(c.norm, c.d_model) if c.prenorm else nn.Identity()
        self.dec_ln = make_norm(c.norm, c.d_model) if c.prenorm else nn.Identity()
        self.lm_head = nn.Linear(c.d_model, c.tgt_vocab_size)

    def _embed(self, emb: nn.Embedding, tokens: torch.Tensor) -> torch.Tensor:
        # the paper scales embeddings by sqrt(d_model) so they are not drowned by the positions
        return self.drop(self.pos(emb(tokens) * math.sqrt(self.config.d_model)))

    def encode(self, src: torch.Tensor, need_weights: bool = False):
        """src (B, S) -> memory (B, S, C), the key padding mask, and encoder weights if asked."""
        mask = padding_mask((src != self.config.pad_id).long())  # (B, 1, 1, S)
        x = self._embed(self.src_emb, src)
        weights = []
        for block in self.encoder:
            x, w = block(x, mask=mask, need_weights=need_weights)
            weights.append(w)
        return self.enc_ln(x), mask, weights

    def decode(self, tgt_in, memory, memory_mask, need_weights: bool = False):
        x = self._embed(self.tgt_emb, tgt_in)
        self_w, cross_w = [], []
        for block in self.decoder:
            x, ws, wc = block(x, memory, memory_mask=memory_mask, need_weights=need_weights)
            self_w.append(ws)
            cross_w.append(wc)
        return self.lm_head(self.dec_ln(x)), self_w, cross_w

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, targets: torch.Tensor | None = None):
        memory, mask, _ = self.encode(src)
        logits, _, _ = self.decode(tgt_in, memory, mask)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def forward_with_attention(self, src: torch.Tensor, tgt_in: torch.Tensor):
        """Logits and a dict of attention weights: 'encoder', 'decoder_self', 'cross' (lists per layer)."""
        memory, mask, enc_w = self.encode(src, need_weights=True)
        logits, self_w, cross_w = self.decode(tgt_in, memory, mask, need_weights=True)
        return logits, {"encoder": enc_w, "decoder_self": self_w, "cross": cross_w}

    @torch.no_grad()
    def greedy_decode(self, src: torch.Tensor, max_len: int, bos_id: int) -> torch.Tensor:
        """Decode (B, max_len) target tokens greedily; the encoder runs once."""
        was_training = self.training
        self.eval()
        memory, mask, _ = self.encode(src)
        out = torch.full((src.size(0), 1), bos_id, dtype=torch.long, device=src.device)
        for _ in range(max_len):
            logits, _, _ = self.decode(out, memory, mask)
            out = torch.cat([out, logits[:, -1:].argmax(-1)], dim=1)
        self.train(was_training)
        return out[:, 1:]

    def num_params(self) -> int:
        return count_parameters(self)[1]
