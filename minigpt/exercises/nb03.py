"""Checkers for notebook 03 (positional encoding).

References are written here from the formulas (Python ``math`` loops, complex-number rotations), not taken
from :mod:`minigpt.positional`, so they can catch a bug in either place.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ._core import checker, expect

__all__ = [
    "check_sinusoidal",
    "check_permutation_test",
    "check_rotation_matrix",
    "check_apply_rotary",
]


def _close(a, b, tol: float = 1e-4) -> bool:
    return isinstance(a, torch.Tensor) and a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=tol,
                                                                                 rtol=tol)


def _ref_pe(T: int, d: int, base: float = 10000.0, exponent=lambda i, d: 2 * i / d, swap=False) -> torch.Tensor:
    """PE[p, 2i] = sin(p / base^(2i/d)), PE[p, 2i+1] = cos(same), one Python float at a time."""
    pe = torch.zeros(T, d, dtype=torch.float64)
    for p in range(T):
        for i in range(d // 2):
            a = p / base ** exponent(i, d)
            s, c = math.sin(a), math.cos(a)
            pe[p, 2 * i], pe[p, 2 * i + 1] = (c, s) if swap else (s, c)
    return pe.float()


@checker("03.1 sinusoidal encoding")
def check_sinusoidal(fn) -> None:
    """fn(T, d) -> (T, d) with PE[p, 2i] = sin(p / 10000^(2i/d)) and PE[p, 2i+1] = cos(p / 10000^(2i/d))."""
    for T, d in [(6, 8), (50, 16), (3, 4)]:
        got = fn(T, d)
        want = _ref_pe(T, d)
        expect(isinstance(got, torch.Tensor), f"return a tensor, got {type(got).__name__}")
        expect(got.shape == (T, d), f"for T={T}, d={d} the table should be (T, d) = {(T, d)}, got {tuple(got.shape)}"
               + (": one row per position, one column per channel" if got.shape == (d, T) else ""))
        expect(got.is_floating_point(), f"the table should hold floats, got dtype {got.dtype}")
        expect(not _close(got, _ref_pe(T, d, swap=True)),
               "sin and cos are swapped: even channels 2i hold the sine, odd channels 2i+1 the cosine "
               "(so position 0 is [0, 1, 0, 1, ...])")
        half = torch.cat([want[:, 0::2], want[:, 1::2]], dim=1)
        expect(not _close(got, half),
               "you put all sines in the first half and all cosines in the second; minigpt interleaves them: "
               "channel 2i = sin, channel 2i+1 = cos of the same angle")
        mult = _ref_pe(2, d, exponent=lambda i, d: -2 * i / d)  # row 1 only: later angles are too large to compare
        expect(not _close(got[1], mult[1], 1e-3),
               "you multiplied the position by 10000^(2i/d); the angle is p / 10000^(2i/d) (frequencies go DOWN "
               "from 1 to 1/10000 across the pairs)")
        shifted = _ref_pe(T + 1, d)[1:]
        expect(not _close(got, shifted), "your positions start at 1: the first row is position 0 (torch.arange(T)), "
               "whose angles are all 0")
        expect(not _close(got, _ref_pe(T, d, exponent=lambda i, d: i / d)),
               "wrong frequency exponent: pair i uses 10000^(2i/d), not 10000^(i/d) (the wavelengths should "
               "run from 2*pi up to 10000*2*pi across the d/2 pairs)")
        pair_j = _ref_pe(T, d)
        for i in range(d // 2):  # the slip of using the channel index j = 2i + 1 for the cosine's frequency
            pair_j[:, 2 * i + 1] = torch.cos(torch.arange(T) / 10000.0 ** ((2 * i + 1) / d))
        expect(not _close(got, pair_j),
               "channels 2i and 2i+1 must share ONE frequency 1 / 10000^(2i/d); you used the cosine's own channel "
               "index (2i+1) in its exponent")
        expect(bool(torch.allclose(got[0, 0::2], torch.zeros(d // 2), atol=1e-6))
               and bool(torch.allclose(got[0, 1::2], torch.ones(d // 2), atol=1e-6)),
               "at position 0 every angle is 0, so the row should be [sin 0, cos 0, ...] = [0, 1, 0, 1, ...]")
        expect(_close(got, want),
               "the values differ from sin/cos(p / 10000^(2i/d)); check that pair i (channels 2i, 2i+1) uses "
               "frequency 1 / 10000^(2i/d) and that the angle is position * frequency")


class _AddPositions(nn.Module):
    def __init__(self, inner: nn.Module, d: int) -> None:
        super().__init__()
        self.inner, self.d = inner, d

    def forward(self, x):
        return self.inner(x + _ref_pe(x.size(1), self.d))


@checker("03.2 permutation test")
def check_permutation_test(fn) -> None:
    """fn(layer, x (1, T, C)) -> True when permuting the tokens just permutes the layer's output."""
    from ..attention import MultiHeadAttention

    C, T = 16, 6
    with torch.random.fork_rng(devices=[]):  # leave the notebook's random stream untouched
        torch.manual_seed(32)
        x = torch.randn(1, T, C)
        attn = MultiHeadAttention(C, 2)
        linear = nn.Linear(C, C)
    cases = [
        ("self-attention without positions", lambda t: attn(t)[0], True),
        ("a per-token Linear layer", linear, True),
        ("self-attention after adding sinusoidal positions", _AddPositions(lambda t: attn(t)[0], C), False),
        ("causal self-attention", lambda t: attn(t, causal=True)[0], False),
        ("a running sum over earlier tokens (cumsum)", lambda t: t.cumsum(dim=1), False),
    ]
    for name, layer, want in cases:
        with torch.no_grad():
            got = fn(layer, x.clone())
        expect(isinstance(got, bool | torch.BoolTensor) or got in (0, 1),
               f"return True or False, got {got!r}")
        got = bool(got)
        if want:
            expect(got, f"{name} treats tokens as a set, so permuting the input must permute the output the same "
                        "way; your test says it does not. Compare layer(x[:, perm]) with layer(x)[:, perm], "
                        "using allclose (not exact equality)")
        else:
            expect(not got, f"{name} depends on token order, but your test says it is permutation-equivariant. "
                            "Use a permutation that really moves tokens (torch.randperm or a flip, not the "
                            "identity) and compare layer(x[:, perm]) with layer(x)[:, perm]")


def _ref_rotation(k: int, d: int, base: float = 10000.0) -> torch.Tensor:
    M = torch.zeros(d, d, dtype=torch.float64)
    for i in range(d // 2):
        b = k / base ** (2 * i / d)
        # (sin a, cos a) -> (sin(a + b), cos(a + b))
        M[2 * i, 2 * i], M[2 * i, 2 * i + 1] = math.cos(b), math.sin(b)
        M[2 * i + 1, 2 * i], M[2 * i + 1, 2 * i + 1] = -math.sin(b), math.cos(b)
    return M.float()


@checker("03.3 rotation matrix")
def check_rotation_matrix(fn) -> None:
    """fn(k, d) -> (d, d) matrix M with PE[p + k] = M @ PE[p] for every position p."""
    for k, d in [(1, 8), (3, 16), (7, 4)]:
        M = fn(k, d)
        expect(isinstance(M, torch.Tensor), f"return a tensor, got {type(M).__name__}")
        expect(M.shape == (d, d), f"for d={d} the matrix should be (d, d) = {(d, d)}, got {tuple(M.shape)}")
        M = M.float()
        pe = _ref_pe(40 + k, d)
        moved = pe[:40] @ M.T  # row p is M @ PE[p]
        if not _close(moved, pe[k:], 1e-3):
            expect(not _close(pe[:40] @ M, pe[k:], 1e-3),
                   f"M.T maps PE(p) to PE(p + {k}), so your matrix is the transpose: with column vectors, "
                   "row 2i of M is [cos b, sin b] and row 2i+1 is [-sin b, cos b]")
            expect(not _close(M, _ref_rotation(k, d, base=1.0 / 10000.0), 1e-4),
                   "you multiplied k by 10000^(2i/d); pair i turns by b = k / 10000^(2i/d)")
            half = torch.block_diag(*[_ref_rotation(k / 10000.0 ** (i / d), 2, base=1.0) for i in range(d // 2)])
            expect(not _close(M, half, 1e-4), "wrong frequency exponent: pair i turns by k / 10000^(2i/d), not "
                   "k / 10000^(i/d)")
            same = torch.block_diag(*[_ref_rotation(k, 2, base=1.0)] * (d // 2))
            expect(not _close(M, same, 1e-4),
                   "every pair is rotated by the same angle k; pair i must turn by k * w_i with its own "
                   "frequency w_i = 1 / 10000^(2i/d)")
            expect(_close(M @ M.T, torch.eye(d), 1e-3),
                   "M is not a rotation (M M^T != I): each 2x2 block should be [[cos b, sin b], [-sin b, cos b]]")
            expect(False, f"M @ PE(p) differs from PE(p + {k}); pair i (channels 2i, 2i+1) is (sin a, cos a) and "
                          f"must become (sin(a + b), cos(a + b)) with b = {k} / 10000^(2i/d)")


def _ref_rotary(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate (x[i], x[i + hs/2]) as the complex number x[i] + j x[i + hs/2] by angle[t, i]."""
    h = x.size(-1) // 2
    z = torch.complex(x[..., :h].double(), x[..., h:].double()) * torch.polar(torch.ones_like(angles.double()),
                                                                              angles.double())
    return torch.cat([z.real, z.imag], dim=-1).float()


@checker("03.4 apply rotary")
def check_apply_rotary(fn) -> None:
    """fn(x (..., T, hs), cos (T, hs/2), sin (T, hs/2)) -> x with pair (i, i + hs/2) rotated by angle[t, i]."""
    g = torch.Generator().manual_seed(34)
    for shape in [(5, 8), (2, 3, 6, 16)]:
        T, hs = shape[-2], shape[-1]
        inv_freq = torch.tensor([10000.0 ** (-2 * i / hs) for i in range(hs // 2)])
        angles = torch.arange(T).float()[:, None] * inv_freq[None, :]  # (T, hs/2)
        x = torch.randn(shape, generator=g)
        x_in = x.clone()
        got = fn(x_in, angles.cos(), angles.sin())
        want = _ref_rotary(x, angles)
        expect(isinstance(got, torch.Tensor), f"return a tensor, got {type(got).__name__}")
        expect(got.shape == x.shape, f"rotating keeps the shape {tuple(x.shape)}, got {tuple(got.shape)}")
        expect(torch.equal(x_in, x), "your function changed its input in place (x1 and x2 from chunk are VIEWS of "
               "x, so x1 *= cos writes into x): build the result with torch.cat of new tensors")
        expect(not _close(got, x), "your output equals the input: nothing was rotated (position 0 keeps its vector, "
               "but position t turns by the angles in cos[t], sin[t])")
        expect(_close(got.norm(dim=-1), x.norm(dim=-1)),
               "the vectors changed length: a rotation only turns them. The first half becomes "
               "x1*cos - x2*sin and the second half x1*sin + x2*cos")
        x1, x2 = x.chunk(2, dim=-1)
        c, sn = angles.cos(), angles.sin()
        expect(not _close(got, torch.cat([x1 * sn + x2 * c, x1 * c - x2 * sn], -1)),
               "the two halves of your result are in the wrong order: the first half is x1*cos - x2*sin, the second "
               "x1*sin + x2*cos")
        expect(not _close(got, torch.cat([x1 * c + x2 * sn, x1 * sn + x2 * c], -1)),
               "sign error: the first half is x1*cos MINUS x2*sin (a rotation, so the vector keeps its length)")
        expect(not _close(got, torch.cat([x1 * sn - x2 * c, x1 * c + x2 * sn], -1)),
               "cos and sin are swapped: the first half is x1*cos - x2*sin, the second x1*sin + x2*cos")
        expect(_close(got[..., 0, :], x[..., 0, :]), "position 0 has angle 0, so it must come out unchanged")
        expect(not _close(got, _ref_rotary(x, -angles)),
               "you rotate by MINUS the angle: first half = x1*cos - x2*sin, second half = x1*sin + x2*cos")
        adjacent = x.clone()
        x_even, x_odd = x[..., 0::2], x[..., 1::2]
        adjacent[..., 0::2] = x_even * angles.cos() - x_odd * angles.sin()
        adjacent[..., 1::2] = x_even * angles.sin() + x_odd * angles.cos()
        expect(not _close(got, adjacent),
               "you paired adjacent channels (0,1), (2,3), ...; minigpt uses the 'rotate half' pairing of channel "
               "i with channel i + hs/2 (x1, x2 = x.chunk(2, dim=-1)), as GPT-NeoX and LLaMA do")
        expect(_close(got, want),
               "the rotated vectors differ from the reference: split x into halves x1, x2 and return "
               "cat([x1*cos - x2*sin, x1*sin + x2*cos], dim=-1)")
