"""Checkers of notebook 03: each passes the reference answer, fails plausible wrong answers, and reports stubs."""

import math

import torch
from _exercise_cases import checker_tests, stub  # noqa: F401

from minigpt.exercises.nb03 import (
    check_apply_rotary,
    check_permutation_test,
    check_rotation_matrix,
    check_sinusoidal,
)


# ---- 03.1 sinusoidal table
def pe_ref(T, d, exponent=lambda two_i, d: two_i / d, swap=False, halves=False):
    pos = torch.arange(T, dtype=torch.float32)[:, None]  # (T, 1)
    two_i = torch.arange(0, d, 2, dtype=torch.float32)  # (d/2,)
    angles = pos / 10000 ** exponent(two_i, d)  # (T, d/2)
    s, c = (angles.cos(), angles.sin()) if swap else (angles.sin(), angles.cos())
    if halves:
        return torch.cat([s, c], dim=1)
    pe = torch.zeros(T, d)
    pe[:, 0::2], pe[:, 1::2] = s, c
    return pe


def pe_channel_exponent(T, d):
    """Common slip: each channel j uses its own exponent j/d, so the cosine gets (2i+1)/d."""
    j = torch.arange(d, dtype=torch.float32)
    angles = torch.arange(T, dtype=torch.float32)[:, None] / 10000 ** (j / d)
    pe = angles.sin()
    pe[:, 1::2] = angles[:, 1::2].cos()
    return pe


SIN_MUTANTS = {
    "sin/cos swapped": (lambda T, d: pe_ref(T, d, swap=True), r"swapped"),
    "exponent i/d instead of 2i/d": (lambda T, d: pe_ref(T, d, exponent=lambda two_i, d: (two_i / 2) / d),
                                     r"frequency exponent"),
    "sines and cosines in halves": (lambda T, d: pe_ref(T, d, halves=True), r"first half"),
    "channel index in the exponent": (pe_channel_exponent, r"share ONE frequency"),
    "base 1000": lambda T, d: pe_ref(T, d, exponent=lambda two_i, d: two_i / d * math.log(1000) / math.log(10000)),
    "multiplies by 10000^(2i/d)": (lambda T, d: pe_ref(T, d, exponent=lambda two_i, d: -two_i / d), r"multiplied"),
    "positions start at 1": (lambda T, d: pe_ref(T + 1, d)[1:], r"start at 1"),
    "table transposed (d, T)": (lambda T, d: pe_ref(T, d).T, r"one row per position"),
    "integer table": (lambda T, d: pe_ref(T, d).long(), r"floats"),
}


# ---- 03.2 permutation test
def perm_ref(layer, x):
    perm = torch.randperm(x.size(1))
    while torch.equal(perm, torch.arange(x.size(1))):
        perm = torch.randperm(x.size(1))
    return torch.allclose(layer(x[:, perm]), layer(x)[:, perm], atol=1e-5)


def perm_inverse_on_output(layer, x):
    perm = torch.tensor([1, 2, 3, 4, 5, 0])[: x.size(1)]
    return torch.allclose(layer(x[:, perm]), layer(x)[:, perm.argsort()], atol=1e-5)


PERM_MUTANTS = {
    "output not un-permuted": (lambda layer, x: torch.allclose(layer(x.flip(1)), layer(x), atol=1e-5),
                               r"treats tokens as a set"),
    "identity permutation": (lambda layer, x: torch.allclose(layer(x[:, torch.arange(x.size(1))]), layer(x)),
                             r"really moves tokens"),
    "always True": (lambda layer, x: True, r"permutation-equivariant"),
    "permutes the channels": (lambda layer, x: torch.allclose(layer(x.flip(2)), layer(x).flip(2), atol=1e-5),
                              r"treats tokens as a set|permutation-equivariant"),
    "permutes the batch axis": (lambda layer, x: torch.allclose(layer(x.flip(0)), layer(x).flip(0), atol=1e-5),
                                r"really moves tokens"),
    "inverse permutation on the output": (perm_inverse_on_output, r"treats tokens as a set"),
    "tolerance far too loose": (lambda layer, x: torch.allclose(layer(x.flip(1)), layer(x).flip(1), atol=10.0),
                                r"permutation-equivariant"),
}


# ---- 03.3 rotation matrix
def rotation_ref(k, d, same_angle=False, transpose=False, backwards=False):
    M = torch.zeros(d, d)
    for i in range(d // 2):
        b = k if same_angle else k / 10000 ** (2 * i / d)
        b = -b if backwards else b
        block = torch.tensor([[math.cos(b), math.sin(b)], [-math.sin(b), math.cos(b)]])
        M[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = block.T if transpose else block
    return M


def rotation_exponent(k, d, power):
    M = torch.zeros(d, d)
    for i in range(d // 2):
        b = k / 10000 ** power(i, d)
        M[2 * i: 2 * i + 2, 2 * i: 2 * i + 2] = torch.tensor([[math.cos(b), math.sin(b)], [-math.sin(b), math.cos(b)]])
    return M


ROT_MUTANTS = {
    "transposed blocks": (lambda k, d: rotation_ref(k, d, transpose=True), r"transpose"),
    "same angle for every pair": (lambda k, d: rotation_ref(k, d, same_angle=True), r"own"),
    "rotates backwards": (lambda k, d: rotation_ref(k, d, backwards=True), r"transpose"),
    "identity": (lambda k, d: torch.eye(d), r"differs from PE\(p \+ \d+\)"),
    "k times 10000^(2i/d)": (lambda k, d: rotation_exponent(k, d, lambda i, d: -2 * i / d), r"multiplied k"),
    "exponent i/d": (lambda k, d: rotation_exponent(k, d, lambda i, d: i / d), r"frequency exponent"),
    "half-size matrix": (lambda k, d: rotation_ref(k, d)[: d // 2, : d // 2], r"should be \(d, d\)"),
}


# ---- 03.4 rotary
def rotary_ref(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def rotary_adjacent(x, cos, sin):
    out = x.clone()
    a, b = x[..., 0::2], x[..., 1::2]
    out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
    return out


def rotary_in_place(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    a, b = x1 * cos - x2 * sin, x1 * sin + x2 * cos
    x1.copy_(a)
    x2.copy_(b)
    return x


ROTARY_MUTANTS = {
    "rotates by minus the angle": (lambda x, c, s: rotary_ref(x, c, -s), r"MINUS the angle"),
    "adjacent pairs": (rotary_adjacent, r"rotate half"),
    "forgets the x2 * sin term": (lambda x, c, s: torch.cat([x.chunk(2, -1)[0] * c, x.chunk(2, -1)[0] * s
                                                              + x.chunk(2, -1)[1] * c], -1), r"changed length"),
    "cos and sin swapped": (lambda x, c, s: rotary_ref(x, s, c), r"cos and sin are swapped"),
    "halves in the wrong order": (lambda x, c, s: rotary_ref(x, c, s).roll(x.size(-1) // 2, -1), r"wrong order"),
    "x1*cos + x2*sin": (lambda x, c, s: torch.cat([x.chunk(2, -1)[0] * c + x.chunk(2, -1)[1] * s,
                                                    x.chunk(2, -1)[0] * s + x.chunk(2, -1)[1] * c], -1),
                        r"changed length|sign error"),
    "returns x unrotated": (lambda x, c, s: x.clone(), r"nothing was rotated"),
    "writes into x": (rotary_in_place, r"in place"),
}

CASES = [
    (check_sinusoidal, pe_ref, SIN_MUTANTS),
    (check_permutation_test, perm_ref, PERM_MUTANTS),
    (check_rotation_matrix, rotation_ref, ROT_MUTANTS),
    (check_apply_rotary, rotary_ref, ROTARY_MUTANTS),
]


test_reference_passes, test_mutant_fails, test_stub_not_done = checker_tests(CASES)


def test_library_passes():
    """minigpt.positional's own functions are correct answers too (the references are independent of them)."""
    from minigpt.positional import apply_rotary, sinusoidal_encoding

    assert check_sinusoidal(sinusoidal_encoding).passed
    assert check_apply_rotary(apply_rotary).passed
