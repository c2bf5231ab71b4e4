"""The pieces a transformer layer is made of: feed-forward, normalisation, and the block that joins them.

A block is attention + feed-forward, each wrapped in a residual connection and a normalisation.
Post-LN (the 2017 paper, ``torch.nn.TransformerEncoderLayer``'s default) normalises after adding the
residual; pre-LN (GPT-2 onward) normalises the branch input and leaves the residual path untouched,
which keeps gradients well scaled in deep stacks and trains without careful warmup.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import KVCache, MultiHeadAttention, dropout
from .positional import apply_rotary

__all__ = ["ACTIVATIONS", "FeedForward", "RMSNorm", "make_norm", "QKNormAttention", "TransformerBlock", "DecoderBlock"]

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "swiglu", "relu2")


class FeedForward(nn.Module):
    """Position-wise MLP: d_model -> d_ff -> d_model.

    ``swiglu`` (Shazeer, 2020) computes silu(x W_gate) * (x W_up); its two input projections are fused
    in ``c_fc``. ``gelu_tanh`` is GPT-2's approximation, needed for exact parity with its weights.
    ``relu2`` is relu(h)**2 (So et al., 2021, "Primer"), cheap on a CPU and used by speedrun recipes.
    """

    def __init__(
        self, d_model: int, d_ff: int, activation: str = "gelu", dropout: float = 0.0, bias: bool = True
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {ACTIVATIONS}")
        self.activation = activation
        n_in = 2 * d_ff if activation == "swiglu" else d_ff
        self.c_fc = nn.Linear(d_model, n_in, bias=bias)
        self.c_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        if self.activation == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.activation == "relu":
            h = F.relu(h)
        elif self.activation == "relu2":
            h = F.relu(h).square()
        elif self.activation == "gelu":
            h = F.gelu(h)
        else:
            h = F.gelu(h, approximate="tanh")
        return dropout(self.dropout, self.c_proj(h))


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich, 2019): LayerNorm without centring or bias."""

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.weight


def make_norm(kind: str, d: int, bias: bool = True, eps: float = 1e-5) -> nn.Module:
    """"layernorm" or "rmsnorm"."""
    if kind == "layernorm":
        return nn.LayerNorm(d, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return RMSNorm(d, eps=eps)
    raise ValueError(f"unknown norm {kind!r}; choose 'layernorm' or 'rmsnorm'")


class QKNormAttention(MultiHeadAttention):
    """Self-attention whose queries and keys are RMS-normalised per head, before RoPE (QK-norm).

    Each head's q and k get unit root-mean-square times a learned gain (``q_norm``, ``k_norm``, one
    per channel), so attention logits q.k / sqrt(hs) stay bounded however large the projections grow:
    the fix for the logit growth that makes high learning rates unstable (Dehghani et al., 2023).
    """

    def __init__(self, d_model: int, n_head: int, n_kv_head: int | None = None, bias: bool = True,
                 dropout: float = 0.0, eps: float = 1e-5) -> None:
        super().__init__(d_model, n_head, n_kv_head, bias=bias, dropout=dropout)
        self.q_norm, self.k_norm = RMSNorm(self.head_size, eps), RMSNorm(self.head_size, eps)

    def _project(self, x: torch.Tensor, context: torch.Tensor | None, rope: tuple[torch.Tensor, torch.Tensor] | None):
        q, k, v = super()._project(x, context, None)  # (B, heads, T, hs) each, not rotated yet
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        return q, k, v


class TransformerBlock(nn.Module):
    """Self-attention + feed-forward with residuals; causal for decoders, bidirectional for encoders."""

    def __init__(
        self,
        d_model: int,
        n_head: int,
        d_ff: int | None = None,
        dropout: float = 0.0,
        activation: str = "gelu",
        norm: str = "layernorm",
        prenorm: bool = True,
        bias: bool = True,
        causal: bool = False,
        n_kv_head: int | None = None,
        eps: float = 1e-5,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.prenorm, self.causal = prenorm, causal
        self.ln_1 = make_norm(norm, d_model, bias, eps)
        self.attn: MultiHeadAttention
        if qk_norm:
            self.attn = QKNormAttention(d_model, n_head, n_kv_head, bias=bias, dropout=dropout, eps=eps)
        else:
            self.attn = MultiHeadAttention(d_model, n_head, n_kv_head, bias=bias, dropout=dropout)
        self.ln_2 = make_norm(norm, d_model, bias, eps)
        self.mlp = FeedForward(d_model, d_ff, activation, dropout, bias)

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_cache: KVCache | None = None,
        layer: int = 0,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        kw = dict(mask=mask, causal=self.causal, rope=rope, kv_cache=kv_cache, layer=layer,
                  need_weights=need_weights)
        if self.prenorm:
            a, w = self.attn(self.ln_1(x), **kw)
            x = x + a
            x = x + self.mlp(self.ln_2(x))
        else:
            a, w = self.attn(x, **kw)
            x = self.ln_1(x + a)
            x = self.ln_2(x + self.mlp(x))
        return x, w


class DecoderBlock(nn.Module):
    """The 2017 decoder layer: causal self-attention, cross-attention to the encoder, feed-forward."""

    def __init__(
        self,
        d_model: int,
        n_head: int,
        d_ff: int | None = None,
        dropout: float = 0.0,
        activation: str = "relu",
        norm: str = "layernorm",
        prenorm: bool = True,
        bias: bool = True,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.prenorm = prenorm
        self.ln_1 = make_norm(norm, d_model, bias, eps)
        self.attn = MultiHeadAttention(d_model, n_head, bias=bias, dropout=dropout)
        self.ln_cross = make_norm(norm, d_model, bias, eps)
        self.cross_attn = MultiHeadAttention(d_model, n_head, bias=bias, dropout=dropout, cross=True)
        self.ln_2 = make_norm(norm, d_model, bias, eps)
        self.mlp = FeedForward(d_model, d_ff, activation, dropout, bias)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        *,
        self_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Returns (x, self-attention weights, cross-attention weights); weights only on request."""
        if self.prenorm:
            a, w_self = self.attn(self.ln_1(x), mask=self_mask, causal=True, need_weights=need_weights)
            x = x + a
            c, w_cross = self.cross_attn(self.ln_cross(x), memory, mask=memory_mask, need_weights=need_weights)
            x = x + c
            x = x + self.mlp(self.ln_2(x))
        else:
            a, w_self = self.attn(x, mask=self_mask, causal=True, need_weights=need_weights)
            x = self.ln_1(x + a)
            c, w_cross = self.cross_attn(x, memory, mask=memory_mask, need_weights=need_weights)
            x = self.ln_cross(x + c)
            x = self.ln_2(x + self.mlp(x))
        return x, w_self, w_cross
