"""Positional information: attention itself is order-blind, so positions must be added or rotated in.

Three schemes, as used in the course:
- sinusoidal (Vaswani et al., 2017, section 3.5): a fixed table added to the token embeddings;
- learned (GPT-2): a trainable table of the same shape;
- rotary, RoPE (Su et al., 2021): rotate query/key pairs by a position-dependent angle so that their
  dot product depends only on the offset between positions.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = [
    "sinusoidal_encoding",
    "SinusoidalPositionalEncoding",
    "LearnedPositionalEmbedding",
    "RotaryEmbedding",
    "apply_rotary",
]


def sinusoidal_encoding(T: int, d: int, base: float = 10000.0) -> torch.Tensor:
    """The (T, d) table PE[pos, 2i] = sin(pos / base^(2i/d)), PE[pos, 2i+1] = cos(same angle)."""
    if d % 2 != 0:
        raise ValueError(f"sinusoidal encoding needs an even width, got d={d}")
    pos = torch.arange(T, dtype=torch.float32).unsqueeze(1)  # (T, 1)
    inv_freq = torch.exp(-math.log(base) * torch.arange(0, d, 2, dtype=torch.float32) / d)  # (d/2,)
    angles = pos * inv_freq  # (T, d/2)
    pe = torch.zeros(T, d)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles)
    return pe


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal table to (B, T, C) inputs; no parameters, any length up to max_len."""

    pe: torch.Tensor  # (max_len, C) buffer

    def __init__(self, d: int, max_len: int = 4096) -> None:
        super().__init__()
        self.register_buffer("pe", sinusoidal_encoding(max_len, d), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        T = x.size(1)
        if offset + T > self.pe.size(0):
            raise ValueError(f"sequence of {offset + T} positions exceeds max_len={self.pe.size(0)}")
        return x + self.pe[offset : offset + T].to(x.dtype)


class LearnedPositionalEmbedding(nn.Module):
    """A trainable (max_len, d) table, as in GPT-2: flexible, but knows nothing past max_len."""

    def __init__(self, max_len: int, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(max_len, d) * 0.02)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        T = x.size(1)
        if offset + T > self.weight.size(0):
            raise ValueError(
                f"sequence of {offset + T} positions exceeds the {self.weight.size(0)} learned positions; "
                "crop the input to the block size"
            )
        return x + self.weight[offset : offset + T]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (first-half, second-half) channel pair of x (..., T, hs) by the angles in cos/sin (T, hs/2).

    Uses the "rotate half" pairing (channel i with i + hs/2), as GPT-NeoX and LLaMA do; any fixed
    pairing gives the same relative-position property.
    """
    # out = (x1 cos - x2 sin, x2 cos + x1 sin) = x * (cos, cos) + (x2, x1) * (-sin, sin): three passes
    # over x instead of seven, which matters on a CPU where RoPE runs on every layer's q and k
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    cos2, sin2 = torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)  # (T, hs): small tables
    return torch.addcmul(x * cos2, torch.cat([x2, x1], dim=-1), sin2)


class RotaryEmbedding(nn.Module):
    """Precomputed RoPE angles; ``forward(T, offset)`` returns the (cos, sin) pair for those positions."""

    cos: torch.Tensor  # (max_len, hs/2) buffer
    sin: torch.Tensor  # (max_len, hs/2) buffer

    def __init__(self, head_dim: int, max_len: int = 4096, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2 != 0:
            raise ValueError(f"RoPE needs an even head size, got {head_dim}")
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (max_len, hs/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, T: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        if offset + T > self.cos.size(0):
            raise ValueError(f"RoPE table has {self.cos.size(0)} positions; asked for {offset + T}")
        return self.cos[offset : offset + T], self.sin[offset : offset + T]
