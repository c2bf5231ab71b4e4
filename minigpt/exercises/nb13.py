"""Checkers for notebook 13 (efficient inference and adaptation).

References are independent of the student's code: n-grams counted with ``collections.Counter``,
the bytes of a real :class:`minigpt.attention.KVCache`, ``F.linear`` on the explicitly merged weight
W + (alpha / r) B A, and round-trip error bounds of symmetric int8 quantization. Each checker also
computes what the common mistakes would give, so a wrong answer is told which one it made.
"""

from __future__ import annotations

import numbers
from collections import Counter

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ..attention import KVCache
from ._core import ExerciseFailed, checker, expect

__all__ = ["check_distinct_n", "check_kv_cache_bytes", "check_lora_forward", "check_quantize_int8"]


# ------------------------------------------------------------------ 13.1 distinct-n


def _grams(tokens: list, n: int) -> list:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _distinct(tokens: list, n: int) -> float:
    grams = _grams(tokens, n)
    return len(Counter(grams)) / len(grams) if grams else 0.0


def _distinct_mistakes(tokens: list, n: int) -> list:
    """(value, message) of the common wrong answers, for a sequence that has at least one n-gram."""
    grams = _grams(tokens, n)
    counts = Counter(grams)
    out = []
    if n > 1:
        out.append((_distinct(tokens, 1),
                    f"for n={n} count n-grams (tuples of {n} consecutive tokens), not single tokens"))
        out.append((_distinct(tokens, 2) if n != 2 else None,
                    f"you counted pairs whatever n is; for n={n} an n-gram is {n} consecutive tokens, tokens[i:i + n]"))
        out.append((len(counts) / len(tokens),
                    f"divide by the number of {n}-grams, len(tokens) - n + 1 = {len(grams)}, "
                                               f"not by the number of tokens {len(tokens)}"))
        joined = ["".join(map(str, g)) for g in grams]
        out.append((len(set(joined)) / len(grams), "you glued each n-gram into one string without a separator, so "
                                                   "different n-grams like ('ab', 'c') and ('a', 'bc') collide: "
                                                   "use tuples, tuple(tokens[i:i + n])"))
    short = _grams(tokens, n)[:-1]
    if short:
        out.append((len(set(short)) / len(short),
                    f"you missed the last {n}-gram: there are len(tokens) - n + 1 of them, "
                                                  "range(len(tokens) - n + 1)"))
    out.append((sum(1 for c in counts.values() if c == 1) / len(grams),
                "'unique' means distinct: count every different n-gram once (len(set(grams))), not only the ones "
                "that occur exactly once"))
    out.append((len(grams) / len(counts),
                "you divided the other way round: distinct-n = unique n-grams / all n-grams (at most 1)"))
    out.append((float(len(counts)), "return the ratio unique / all n-grams, not the count of unique n-grams"))
    return out


@checker("13.1 distinct-n")
def check_distinct_n(fn) -> None:
    """fn(tokens: list, n: int) -> unique n-grams / total n-grams (0.0 when there is no n-gram)."""
    cases = [
        ("the cat sat on the mat the cat sat".split(), 2),
        ("the cat sat on the mat the cat sat".split(), 1),
        ("a a a a a a".split(), 2),
        (["ab", "c", "a", "bc", "ab", "c"], 2),
        (list("to be or not to be"), 3),
        ("every word here differs".split(), 2),
        ("one two three".split(), 3),
        ("short".split(), 2),
        ([], 1),
    ]
    for tokens, n in cases:
        want = _distinct(tokens, n)
        try:
            got = fn(list(tokens), n)
        except ZeroDivisionError as e:
            raise ExerciseFailed(f"{tokens} has no {n}-gram: return 0.0 there instead of dividing by zero") from e
        expect(isinstance(got, numbers.Real), f"return a number (a float), got {type(got).__name__}")
        if len(tokens) < n or not tokens:
            expect(float(got) == 0.0, f"{tokens} has no {n}-gram: return 0.0")
            continue
        if abs(float(got) - want) < 1e-9:
            continue
        for value, message in _distinct_mistakes(tokens, n):
            if value is not None and abs(float(got) - value) < 1e-9 and abs(value - want) > 1e-9:
                expect(False, f"distinct-{n} of {tokens}: {message} (expected {want:.4f}, got {float(got):.4f})")
        expect(False, f"distinct-{n} of {' '.join(map(str, tokens))!r}: expected {want:.4f} = unique {n}-grams / all "
                      f"{len(tokens) - n + 1} {n}-grams, got {float(got):.4f}")


# ------------------------------------------------------------------ 13.2 KV-cache size


@checker("13.2 KV-cache bytes")
def check_kv_cache_bytes(fn) -> None:
    """fn(n_layer, batch, n_head, n_kv_head, seq_len, head_size, bytes_per_value) -> int bytes."""
    # the first case keeps every factor distinct (2, 3, 5, 7 = n_head / n_kv_head, 11, 4 bytes, 8 bits), so the
    # factor a wrong answer is off by names the mistake
    cases = [(3, 5, 14, 2, 11, 16, 4), (2, 1, 4, 4, 16, 8, 4), (4, 3, 6, 1, 7, 4, 2), (1, 2, 8, 8, 5, 32, 2)]
    for n_layer, B, nh, nkv, T, hs, nbytes in cases:
        dtype = torch.float32 if nbytes == 4 else torch.float16
        cache = KVCache(n_layer, B, nkv, T, hs, dtype=dtype)  # what the model really allocates
        want = cache.nbytes
        got = fn(n_layer, B, nh, nkv, T, hs, nbytes)
        expect(got is not None, "return the number of bytes")
        expect(isinstance(got, numbers.Real) or (isinstance(got, torch.Tensor) and got.numel() == 1),
               f"return the number of bytes as a number, got {type(got).__name__}")
        got = float(got)
        if got == want:
            continue
        where = (f"n_layer={n_layer}, batch={B}, n_head={nh}, n_kv_head={nkv}, seq_len={T}, head_size={hs}, "
                 f"{nbytes} bytes/value")
        mistakes = [
            (want / 2, "half the expected size: the cache stores keys AND values (a factor 2)"),
            (want * nh / nkv, f"with grouped-query attention only the {nkv} key/value heads are cached, not all {nh} "
                              "query heads: use n_kv_head"),
            (want / B, "you left out the batch: every sequence in the batch has its own keys and values"),
            (want / n_layer, "you left out n_layer: every layer caches its own keys and values"),
            (want / nbytes, f"that is the number of values, not bytes: multiply by bytes_per_value ({nbytes})"),
            (want * 8, "that is bits, not bytes: bytes_per_value already counts bytes"),
            (want / T, "you left out seq_len: the cache holds keys and values for every position"),
            (want / hs, "you left out head_size: each key and value is a vector of head_size numbers"),
        ]
        for value, message in mistakes:
            if got == value and value != want:
                expect(False, f"{message} ({where}: expected {want:,} bytes, got {got:,.0f})")
        expect(False, f"{where}: expected {want:,} bytes = 2 (K and V) x n_layer x batch x n_kv_head x seq_len x "
                      f"head_size x bytes_per_value, got {got:,.0f}")


# ------------------------------------------------------------------ 13.3 LoRA forward


class _UpdateWatch(TorchFunctionMode):
    """Notes any torch op that builds an (out, in) or (in, out) matrix from something other than W itself.

    The only tensor of that shape a LoRA forward needs is W (and views of it such as W.T); a result of that
    shape computed from A or B (B @ A, A.T @ B.T, addmm(W, B, A), W + B @ A, ...) is the full update matrix
    the task forbids.
    """

    def __init__(self, full_shapes):
        super().__init__()
        self.full_shapes = full_shapes
        self.formed = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.formed is None:
            ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor) and t.dim() > 0]
            outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
            if any(t.dim() >= 2 and tuple(t.shape[-2:]) in self.full_shapes for t in outs) and any(
                    t.dim() < 2 or tuple(t.shape[-2:]) not in self.full_shapes for t in ins):
                self.formed = getattr(func, "__name__", str(func))
        return out


@checker("13.3 LoRA forward")
def check_lora_forward(fn) -> None:
    """fn(x (N, in), W (out, in), b (out,), A (r, in), B (out, r), alpha) -> (N, out)."""
    g = torch.Generator().manual_seed(0)
    # N, r, in, out all different, so an (out, in) tensor can only be the weight or the update
    for n_in, n_out, r, alpha in [(8, 6, 2, 6.0), (12, 5, 3, 3.0), (7, 9, 1, 16.0), (10, 7, 4, 4.0)]:
        x = torch.randn(4, n_in, generator=g)
        W = torch.randn(n_out, n_in, generator=g)
        b = torch.randn(n_out, generator=g)
        A = torch.randn(r, n_in, generator=g)
        B = torch.randn(n_out, r, generator=g)
        want = F.linear(x, W + (alpha / r) * (B @ A), b)  # the merged weight of Hu et al. (2021)
        inputs = [t.clone() for t in (x, W, b, A, B)]
        watch = _UpdateWatch({(n_out, n_in), (n_in, n_out)})
        with watch:
            got = fn(*inputs, alpha)
        expect(all(torch.equal(t, u) for t, u in zip(inputs, (x, W, b, A, B))),
               "your function modified its inputs in place (W += ..., x.mul_ ...): the base weight is frozen and "
               "shared, compute a new output instead")
        expect(watch.formed is None,
               f"you built the full ({n_out}, {n_in}) update matrix B A (in {watch.formed}): the task is to apply "
               "the update without forming it, x A^T first (N, r), then B: (N, out). That costs r (in + out) "
               "multiply-adds per row instead of in x out, and is what makes LoRA cheap")
        expect(isinstance(got, torch.Tensor) and got.shape == want.shape,
               f"output must be (N, out) = {tuple(want.shape)}, got {getattr(got, 'shape', type(got))}")
        upd = F.linear(F.linear(x, A), B)
        mistakes = [
            (F.linear(x, W, b) + alpha * upd, "the update is scaled by alpha / r, not alpha"),
            (F.linear(x, W, b) + upd, "you forgot the scaling alpha / r of the low-rank update"),
            (F.linear(x, W, b) + (r / alpha) * upd, "the scale is alpha / r, not r / alpha"),
            (F.linear(x, W, b) + (alpha / n_in) * upd, "r is the rank, A.shape[0]; you divided alpha by A.shape[1] "
                                                       "(the input width)"),
            (F.linear(x, W, b), "the output ignores the LoRA update B A x"),
            (F.linear(x, W) + (alpha / r) * upd, "you dropped the bias b of the frozen layer"),
            (F.linear(x, W, b) + (alpha / r) * upd + b, "you added the bias twice (once in the base layer, once more "
                                                        "with the update); the update has no bias"),
            ((alpha / r) * (F.linear(x, W, b) + upd),
             "only the low-rank update is scaled by alpha / r, not the frozen layer"),
        ]
        for value, message in mistakes:
            if torch.allclose(got, value, atol=1e-4) and not torch.allclose(value, want, atol=1e-4):
                expect(False, message)
        expect(torch.allclose(got, want, atol=1e-4),
               "output differs from x W^T + b + (alpha / r) x A^T B^T (A: (r, in), B: (out, r))")
    # B = 0 (LoRA's initialisation) must give the base layer exactly
    x, W, b = torch.randn(3, 5, generator=g), torch.randn(4, 5, generator=g), torch.randn(4, generator=g)
    got = fn(x, W, b, torch.randn(2, 5, generator=g), torch.zeros(4, 2), 8.0)
    expect(torch.allclose(got, F.linear(x, W, b), atol=1e-6), "with B = 0 the output must equal the base layer")


# ------------------------------------------------------------------ 13.4 int8 quantization


@checker("13.4 symmetric int8 quantization")
def check_quantize_int8(fn) -> None:
    """fn(w (out, in) float) -> (q int8 (out, in), scale float (out, 1)); w ~ q * scale, one scale per row."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 32, generator=g)
    w[0] *= 100.0  # one row with a much larger range: a single scale for the whole matrix would hurt the rest
    w[1] *= 0.01
    w[2, 5] = -w[2].abs().max() * 1.5  # the largest magnitude is negative
    w_in = w.clone()
    out = fn(w_in)
    expect(torch.equal(w_in, w), "do not modify w in place: compute q and scale from it")
    expect(isinstance(out, tuple | list) and len(out) == 2, "return a pair (q, scale)")
    q, scale = out
    expect(isinstance(q, torch.Tensor) and q.dtype == torch.int8,
           f"q must be an int8 tensor (.to(torch.int8)), got {getattr(q, 'dtype', type(q).__name__)}")
    expect(q.shape == w.shape, f"q must have the weight's shape {tuple(w.shape)}, got {tuple(q.shape)}")
    expect(isinstance(scale, torch.Tensor), f"return scale as a tensor of shape (out, 1), got {type(scale).__name__}")
    out_rows = w.size(0)
    if tuple(scale.shape) == (1, w.size(1)) or (scale.dim() == 1 and scale.numel() == w.size(1)):
        expect(False, f"one scale per output ROW: take the max over each row, amax(dim=1, keepdim=True), giving "
                      f"shape ({out_rows}, 1); you computed one per column, shape {tuple(scale.shape)}")
    if scale.numel() == 1:
        expect(False, "you used one scale for the whole matrix (per-tensor): one row with large weights then "
                      "wastes the int8 range of all the others; use one scale per output row")
    if tuple(scale.shape) == (out_rows,):
        expect(False, f"scale has shape ({out_rows},) but must be ({out_rows}, 1) (keepdim=True): with shape "
                      f"({out_rows},), q * scale broadcasts along the LAST dimension, i.e. it multiplies columns, "
                      "and fails or silently mis-scales every weight matrix that is not square")
    expect(tuple(scale.shape) == (out_rows, 1), f"scale must have shape ({out_rows}, 1), got {tuple(scale.shape)}")
    scale = scale.float()
    want_scale = w.abs().amax(dim=1, keepdim=True) / 127
    per_tensor = torch.full_like(want_scale, float(w.abs().max()) / 127)
    if torch.allclose(scale, per_tensor, rtol=1e-5):
        expect(False, "you used one scale for the whole matrix (per-tensor), repeated per row: the scale of each "
                      "row is max|w_row| / 127")
    if torch.allclose(scale, w.amax(dim=1, keepdim=True) / 127, rtol=1e-5):
        expect(False, "use the largest MAGNITUDE, w.abs().amax(dim=1), not the largest value w.amax(dim=1): in row 2 "
                      "the weight furthest from 0 is negative")
    for div, hint in [(128, "128"), (255, "255 (that is the unsigned range)"), (256, "256")]:
        if torch.allclose(scale, want_scale * 127 / div, rtol=1e-5):
            expect(False, f"you divided by {hint}; symmetric int8 maps the largest magnitude to +-127, so scale = "
                          "max|w_row| / 127")
    if torch.allclose(scale, 1 / want_scale, rtol=1e-5):
        expect(False, "that is 127 / max|w_row|, the inverse: return scale = max|w_row| / 127 so that w ~ q * scale")
    expect(torch.allclose(scale, want_scale, rtol=1e-5),
           "scale of each row must be max|w_row| / 127 (symmetric: the largest magnitude maps to +-127)")
    expect(int(q.abs().max()) <= 127, "values must stay in [-127, 127] (symmetric range, -128 unused)")
    err = (q.float() * scale - w).abs()
    if bool((err <= scale / 2 + 1e-6).all()):
        return
    truncated = torch.trunc(w / scale).clamp(-127, 127).to(torch.int8)
    if int((q.int() - truncated.int()).abs().max()) == 0:
        expect(False, "round to the nearest integer (torch.round) before .to(torch.int8): the conversion alone "
                      "truncates towards zero, which doubles the worst error")
    if int((q.int() - torch.round(w * scale).clamp(-127, 127).int()).abs().max()) == 0:
        expect(False, "q = round(w / scale): divide by the scale, do not multiply")
    expect(False, "q must be round(w / scale) clamped to [-127, 127], so that q * scale is within half a step "
                  f"(scale / 2) of w; the largest error is {float((err / scale).max()):.2f} steps")
