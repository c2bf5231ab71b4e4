"""Attention: the one operation a transformer is built around.

Shapes: B batch, T query length, S key length, C model width, nh query heads, nkv key/value heads,
hs head size (C // nh).

Mask semantics (used everywhere in minigpt): a boolean mask broadcastable to (B, nh, T, S) where
``True`` means "this query may attend to this key" -- the same convention as
``torch.nn.functional.scaled_dot_product_attention``. A query whose keys are all masked out (a padded
query) gets all-zero weights and a zero output instead of NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .positional import apply_rotary

__all__ = [
    "scaled_dot_product_attention",
    "fast_attention",
    "causal_mask",
    "padding_mask",
    "MultiHeadAttention",
    "KVCache",
]


def causal_mask(T: int, S: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (T, S) mask where query i may see keys up to its own absolute position.

    With a KV cache the T queries are the *last* T positions of S keys, so query i sits at absolute
    position S - T + i. That offset is why ``is_causal=True`` (which aligns the top-left corners) is
    wrong whenever T != S.
    """
    S = T if S is None else S
    if S < T:
        raise ValueError(f"causal_mask: key length S={S} must be >= query length T={T}")
    q_pos = torch.arange(S - T, S, device=device).unsqueeze(1)  # (T, 1)
    k_pos = torch.arange(S, device=device).unsqueeze(0)  # (1, S)
    return k_pos <= q_pos


def padding_mask(lengths_or_mask: torch.Tensor, S: int | None = None) -> torch.Tensor:
    """Key-padding mask of shape (B, 1, 1, S) from sequence lengths (B,) or a 0/1 mask (B, S).

    Accepts either the per-example lengths or a Hugging Face style ``attention_mask`` (1 = real token).
    """
    x = lengths_or_mask
    if x.dim() == 1:
        if S is None:
            S = int(x.max())
        keep = torch.arange(S, device=x.device).unsqueeze(0) < x.unsqueeze(1)  # (B, S)
    elif x.dim() == 2:
        keep = x.bool()
    else:
        raise ValueError(f"padding_mask expects lengths (B,) or an attention mask (B, S), got {tuple(x.shape)}")
    return keep[:, None, None, :]


def _check_mask(mask: torch.Tensor) -> torch.Tensor:
    if mask.dtype != torch.bool:
        raise TypeError(
            f"attention masks must be boolean (True = may attend), got dtype {mask.dtype}; "
            "convert with mask.bool() or build one with causal_mask()/padding_mask()"
        )
    return mask


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d_k)) v, written out so the weights can be looked at.

    Vaswani et al. (2017), eq. 1. q: (..., T, hs), k and v: (..., S, hs). Returns (output, weights)
    with weights of shape (..., T, S). Dividing by sqrt(d_k) keeps the score variance near 1, so the
    softmax does not saturate as the head size grows.
    """
    T, S = q.size(-2), k.size(-2)
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., T, S)
    allowed = None
    if is_causal:
        allowed = causal_mask(T, S, device=q.device)
    if mask is not None:
        m = _check_mask(mask)
        allowed = m if allowed is None else allowed & m
    if allowed is not None:
        # finfo.min rather than -inf: a fully masked row then softmaxes to uniform instead of NaN,
        # and we zero it explicitly below.
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    weights = F.softmax(scores.float(), dim=-1).to(q.dtype)
    if allowed is not None:
        weights = weights.masked_fill(~allowed, 0.0)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v, weights


def fast_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """The same result as :func:`scaled_dot_product_attention` through PyTorch's fused kernels.

    ``F.scaled_dot_product_attention`` picks flash / memory-efficient kernels where it can and never
    materialises the (T, S) weights, so it is the path models use for training and decoding.
    ``enable_gqa``: k and v have fewer heads than q (grouped-query attention); the kernel reads each
    key/value head for its group of query heads instead of us copying it out to every head first.
    """
    T, S = q.size(-2), k.size(-2)
    if is_causal and (mask is not None or T != S):
        # is_causal aligns the top-left corner; with a cache or an extra mask build the mask ourselves.
        cm = causal_mask(T, S, device=q.device)
        mask = cm if mask is None else _check_mask(mask) & cm
        is_causal = False
    if mask is not None:
        mask = _check_mask(mask)
        # A fully masked row would give NaN in the fused kernel; let it see key 0 and zero it after.
        dead = ~mask.any(dim=-1, keepdim=True)  # (..., T, 1)
        if bool(dead.any()):
            mask = mask | (dead & (torch.arange(S, device=q.device) == 0))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale,
                                                 enable_gqa=enable_gqa)
            return out.masked_fill(dead, 0.0)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa
    )


class KVCache:
    """Keys and values of every layer, preallocated for incremental decoding.

    Each layer's buffer is (B, nkv, max_len, hs); ``pos`` is how many positions are filled. Layers
    write their new keys at [pos, pos + T) and the model advances ``pos`` once per forward pass.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        max_len: int,
        head_size: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (batch_size, n_kv_head, max_len, head_size)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.max_len = max_len
        self.pos = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's (B, nkv, T, hs) keys/values and return all keys/values so far."""
        T = k.size(2)
        end = self.pos + T
        if end > self.max_len:
            raise RuntimeError(
                f"KV cache is full ({self.max_len} positions); crop the context or start a new cache"
            )
        self.k[layer].narrow(2, self.pos, T).copy_(k)
        self.v[layer].narrow(2, self.pos, T).copy_(v)
        # only the filled prefix: attention never reads the empty rest of the buffer
        return self.k[layer].narrow(2, 0, end), self.v[layer].narrow(2, 0, end)

    def advance(self, T: int) -> None:
        self.pos += T

    def reset(self) -> None:
        self.pos = 0

    @property
    def batch_size(self) -> int:
        return self.k[0].size(0)

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search keeps the caches of the surviving beams)."""
        self.k = [k.index_select(0, index) for k in self.k]
        self.v = [v.index_select(0, index) for v in self.v]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


def dropout(module: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, skipped outright when it would do nothing (eval mode or p = 0): decoding runs the
    model once per token, and there a module call costs more than the layer's arithmetic."""
    return module(x) if module.training and module.p > 0 else x


class MultiHeadAttention(nn.Module):
    """Multi-head attention with optional grouped-query heads, RoPE, causal masking and a KV cache.

    Self-attention uses one fused projection ``c_attn`` (C -> (nh + 2 nkv) hs), which is both faster and
    the layout GPT-2 uses; cross-attention projects queries from x (``q_proj``) and keys/values from the
    context (``kv_proj``). ``n_kv_head < n_head`` is grouped-query attention (Ainslie et al., 2023):
    groups of query heads share one key/value head, shrinking the KV cache by n_head / n_kv_head.
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        n_kv_head: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        cross: bool = False,
    ) -> None:
        super().__init__()
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if d_model % n_head != 0:
            raise ValueError(
                f"d_model (n_embd) = {d_model} is not divisible by n_head = {n_head}; "
                f"pick n_head from the divisors of {d_model} or change the width"
            )
        if n_head % n_kv_head != 0:
            raise ValueError(f"n_head = {n_head} must be a multiple of n_kv_head = {n_kv_head}")
        self.d_model, self.n_head, self.n_kv_head = d_model, n_head, n_kv_head
        self.head_size = d_model // n_head
        self.cross = cross
        kv_dim = 2 * n_kv_head * self.head_size
        if cross:
            self.q_proj = nn.Linear(d_model, d_model, bias=bias)
            self.kv_proj = nn.Linear(d_model, kv_dim, bias=bias)
        else:
            self.c_attn = nn.Linear(d_model, d_model + kv_dim, bias=bias)
        self.c_proj = nn.Linear(d_model, d_model, bias=bias)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def _project(self, x: torch.Tensor, context: torch.Tensor | None, rope: tuple[torch.Tensor, torch.Tensor] | None):
        B, T, C = x.shape
        hs, nh, nkv = self.head_size, self.n_head, self.n_kv_head
        if self.cross:
            if context is None:
                raise ValueError("cross-attention needs a context (the encoder output)")
            S = context.size(1)
            q = self.q_proj(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
            kv = self.kv_proj(context).view(B, S, 2 * nkv, hs).transpose(1, 2)  # (B, 2 nkv, S, hs)
            k, v = kv.split(nkv, dim=1)  # (B, nkv, S, hs) each
            if rope is not None:  # the (T, hs/2) tables broadcast over batch and heads
                q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
            return q, k, v
        qkv = self.c_attn(x).view(B, T, nh + 2 * nkv, hs).transpose(1, 2)  # (B, nh + 2 nkv, T, hs)
        if rope is not None:  # queries and keys rotated in one pass
            q, k = apply_rotary(qkv[:, : nh + nkv], *rope).split([nh, nkv], dim=1)
            return q, k, qkv[:, nh + nkv :]
        q, k, v = qkv.split([nh, nkv, nkv], dim=1)  # (B, nh, T, hs), (B, nkv, T, hs) x 2
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_cache: KVCache | None = None,
        layer: int = 0,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, T, C) -> (B, T, C); weights (B, nh, T, S) only when ``need_weights``.

        ``rope`` is the (cos, sin) pair for these T positions; ``kv_cache`` appends this step's keys
        and values to layer ``layer``'s cache and attends over everything cached so far.
        """
        B, T, C = x.shape
        q, k, v = self._project(x, context, rope)
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)  # (B, nkv, S, hs) with S = pos + T
        grouped = self.n_kv_head != self.n_head
        dropout_p = self.dropout if self.training else 0.0
        # A single decoding step sees every cached key: no causal mask is needed at all.
        causal = causal and not (kv_cache is not None and T == 1)
        if need_weights:
            if grouped:  # each key/value head serves n_head // n_kv_head query heads
                rep = self.n_head // self.n_kv_head
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # (B, nh, S, hs)
            y, w = scaled_dot_product_attention(q, k, v, mask=mask, is_causal=causal, dropout_p=dropout_p)
        else:  # grouped heads without copying the (cached) keys and values out to every query head
            y = fast_attention(q, k, v, mask=mask, is_causal=causal, dropout_p=dropout_p, enable_gqa=grouped)
            w = None
        y = y.transpose(1, 2).reshape(B, T, C)  # re-assemble heads side by side
        return dropout(self.resid_dropout, self.c_proj(y)), w
