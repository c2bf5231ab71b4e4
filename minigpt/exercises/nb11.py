"""Checkers for notebook 11 (efficient inference and adaptation).

References are independent of the student's code: n-grams counted with ``collections.Counter``,
the bytes of a real :class:`minigpt.attention.KVCache`, ``F.linear`` on the explicitly merged weight
W + (alpha / r) B A, and round-trip error bounds of symmetric int8 quantization.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F

from ..attention import KVCache
from ._core import checker, expect

__all__ = ["check_distinct_n", "check_kv_cache_bytes", "check_lora_forward", "check_quantize_int8"]


# ------------------------------------------------------------------ 11.1 distinct-n


def _distinct(tokens: list, n: int) -> float:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(Counter(grams)) / len(grams) if grams else 0.0


@checker("11.1 distinct-n")
def check_distinct_n(fn) -> None:
    """fn(tokens: list, n: int) -> unique n-grams / total n-grams (0.0 when there is no n-gram)."""
    cases = [
        ("the cat sat on the mat the cat sat".split(), 1),
        ("the cat sat on the mat the cat sat".split(), 2),
        ("a a a a a a".split(), 2),
        (list("to be or not to be"), 3),
        ("every word here differs".split(), 2),
        ("short".split(), 2),
    ]
    for tokens, n in cases:
        want = _distinct(tokens, n)
        got = fn(list(tokens), n)
        expect(got is not None, "return a number")
        if len(tokens) < n:
            expect(float(got) == 0.0, f"{tokens} has no {n}-gram: return 0.0 (and do not divide by zero)")
            continue
        if n > 1 and abs(float(got) - _distinct(tokens, 1)) < 1e-9 and abs(want - _distinct(tokens, 1)) > 1e-9:
            expect(False, f"for n={n} count n-grams (tuples of {n} consecutive tokens), not single tokens")
        expect(abs(float(got) - want) < 1e-9,
               f"distinct-{n} of {' '.join(map(str, tokens))!r}: expected {want:.4f} = unique {n}-grams / all "
               f"{len(tokens) - n + 1} {n}-grams, got {float(got):.4f}")


# ------------------------------------------------------------------ 11.2 KV-cache size


@checker("11.2 KV-cache bytes")
def check_kv_cache_bytes(fn) -> None:
    """fn(n_layer, batch, n_head, n_kv_head, seq_len, head_size, bytes_per_value) -> int bytes."""
    cases = [(2, 1, 4, 4, 16, 8, 4), (3, 2, 8, 2, 10, 16, 4), (4, 3, 6, 1, 7, 4, 2)]
    for n_layer, B, nh, nkv, T, hs, nbytes in cases:
        dtype = torch.float32 if nbytes == 4 else torch.float16
        cache = KVCache(n_layer, B, nkv, T, hs, dtype=dtype)  # what the model really allocates
        want = cache.nbytes
        got = fn(n_layer, B, nh, nkv, T, hs, nbytes)
        expect(got is not None, "return the number of bytes")
        if int(got) * 2 == want:
            expect(False, "half the expected size: the cache stores keys AND values (a factor 2)")
        if nkv != nh and int(got) == want * nh // nkv:
            expect(False, f"with grouped-query attention only the {nkv} key/value heads are cached, not all {nh} "
                          "query heads: use n_kv_head")
        expect(int(got) == want,
               f"n_layer={n_layer}, batch={B}, n_kv_head={nkv}, seq_len={T}, head_size={hs}, {nbytes} bytes/value: "
               f"expected {want:,} bytes, got {int(got):,}")


# ------------------------------------------------------------------ 11.3 LoRA forward


@checker("11.3 LoRA forward")
def check_lora_forward(fn) -> None:
    """fn(x (N, in), W (out, in), b (out,), A (r, in), B (out, r), alpha) -> (N, out)."""
    g = torch.Generator().manual_seed(0)
    for n_in, n_out, r, alpha in [(8, 6, 2, 4.0), (12, 5, 3, 3.0), (7, 9, 1, 16.0)]:
        x = torch.randn(4, n_in, generator=g)
        W = torch.randn(n_out, n_in, generator=g)
        b = torch.randn(n_out, generator=g)
        A = torch.randn(r, n_in, generator=g)
        B = torch.randn(n_out, r, generator=g)
        want = F.linear(x, W + (alpha / r) * (B @ A), b)  # the merged weight of Hu et al. (2021)
        got = fn(x, W, b, A, B, alpha)
        expect(isinstance(got, torch.Tensor) and got.shape == want.shape,
               f"output must be (N, out) = {tuple(want.shape)}, got {getattr(got, 'shape', type(got))}")
        if torch.allclose(got, F.linear(x, W + alpha * (B @ A), b), atol=1e-4) and r > 1:
            expect(False, "the update is scaled by alpha / r, not alpha")
        if torch.allclose(got, F.linear(x, W + B @ A, b), atol=1e-4) and alpha != r:
            expect(False, "you forgot the scaling alpha / r of the low-rank update")
        expect(not torch.allclose(got, F.linear(x, W, b), atol=1e-4), "the output ignores the LoRA update B A")
        expect(torch.allclose(got, want, atol=1e-4),
               "output differs from x (W + alpha/r * B A)^T + b: the update is x A^T B^T (A: (r, in), B: (out, r))")
    # B = 0 (LoRA's initialisation) must give the base layer exactly
    x, W, b = torch.randn(3, 5, generator=g), torch.randn(4, 5, generator=g), torch.randn(4, generator=g)
    got = fn(x, W, b, torch.randn(2, 5, generator=g), torch.zeros(4, 2), 8.0)
    expect(torch.allclose(got, F.linear(x, W, b), atol=1e-6), "with B = 0 the output must equal the base layer")


# ------------------------------------------------------------------ 11.4 int8 quantization


@checker("11.4 symmetric int8 quantization")
def check_quantize_int8(fn) -> None:
    """fn(w (out, in) float) -> (q int8 (out, in), scale float (out, 1)); w ~ q * scale, one scale per row."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 32, generator=g)
    w[0] *= 100.0  # one row with a much larger range: a single scale for the whole matrix would hurt the rest
    w[1] *= 0.01
    w[2, 5] = -w[2].abs().max() * 1.5  # the largest magnitude is negative
    out = fn(w.clone())
    expect(isinstance(out, tuple | list) and len(out) == 2, "return a pair (q, scale)")
    q, scale = out
    expect(isinstance(q, torch.Tensor) and q.dtype == torch.int8,
           f"q must be an int8 tensor, got {getattr(q, 'dtype', q)}")
    expect(q.shape == w.shape, f"q must have the weight's shape {tuple(w.shape)}")
    scale = torch.as_tensor(scale, dtype=torch.float32)
    expect(scale.numel() == w.size(0), f"one scale per output row: expected {w.size(0)} scales, got {scale.numel()}")
    scale = scale.reshape(-1, 1)
    want_scale = w.abs().amax(dim=1, keepdim=True) / 127
    expect(torch.allclose(scale, want_scale, rtol=1e-5),
           "scale of each row must be max|w_row| / 127 (symmetric: the largest magnitude maps to +-127)")
    expect(int(q.abs().max()) <= 127, "values must stay in [-127, 127] (symmetric range, -128 unused)")
    err = (q.float() * scale - w).abs()
    expect(bool((err <= scale / 2 + 1e-6).all()),
           "round to the nearest integer (torch.round), do not truncate: the error must be at most half a step")
