"""Checkers of notebook 03: each passes the reference answer, fails plausible wrong answers, and reports stubs."""

import math

import pytest
import torch
from _exercise_cases import checker_tests, stub  # noqa: F401

from minigpt.exercises import ExerciseFailed
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
    "sin/cos swapped": lambda T, d: pe_ref(T, d, swap=True),
    "exponent i/d instead of 2i/d": lambda T, d: pe_ref(T, d, exponent=lambda two_i, d: (two_i / 2) / d),
    "sines and cosines in halves": lambda T, d: pe_ref(T, d, halves=True),
    "channel index in the exponent": pe_channel_exponent,
    "base 1000": lambda T, d: pe_ref(T, d, exponent=lambda two_i, d: two_i / d * math.log(1000) / math.log(10000)),
}


# ---- 03.2 permutation test
def perm_ref(layer, x):
    perm = torch.randperm(x.size(1))
    while torch.equal(perm, torch.arange(x.size(1))):
        perm = torch.randperm(x.size(1))
    return torch.allclose(layer(x[:, perm]), layer(x)[:, perm], atol=1e-5)


PERM_MUTANTS = {
    "output not un-permuted": lambda layer, x: torch.allclose(layer(x.flip(1)), layer(x), atol=1e-5),
    "identity permutation": lambda layer, x: torch.allclose(layer(x[:, torch.arange(x.size(1))]), layer(x)),
    "always True": lambda layer, x: True,
    "permutes the channels": lambda layer, x: torch.allclose(layer(x.flip(2)), layer(x).flip(2), atol=1e-5),
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


ROT_MUTANTS = {
    "transposed blocks": lambda k, d: rotation_ref(k, d, transpose=True),
    "same angle for every pair": lambda k, d: rotation_ref(k, d, same_angle=True),
    "rotates backwards": lambda k, d: rotation_ref(k, d, backwards=True),
    "identity": lambda k, d: torch.eye(d),
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


ROTARY_MUTANTS = {
    "rotates by minus the angle": lambda x, c, s: rotary_ref(x, c, -s),
    "adjacent pairs": rotary_adjacent,
    "forgets the x2 * sin term": lambda x, c, s: torch.cat([x.chunk(2, -1)[0] * c, x.chunk(2, -1)[0] * s
                                                             + x.chunk(2, -1)[1] * c], -1),
    "cos and sin swapped": lambda x, c, s: rotary_ref(x, s, c),
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


def test_messages_speak_in_teaching_terms():
    with pytest.raises(ExerciseFailed, match="swapped"):
        check_sinusoidal(SIN_MUTANTS["sin/cos swapped"])
    with pytest.raises(ExerciseFailed, match="frequency exponent"):
        check_sinusoidal(SIN_MUTANTS["exponent i/d instead of 2i/d"])
    with pytest.raises(ExerciseFailed, match="transpose"):
        check_rotation_matrix(ROT_MUTANTS["rotates backwards"])
    with pytest.raises(ExerciseFailed, match="own"):
        check_rotation_matrix(ROT_MUTANTS["same angle for every pair"])
    with pytest.raises(ExerciseFailed, match="rotate half"):
        check_apply_rotary(ROTARY_MUTANTS["adjacent pairs"])
    with pytest.raises(ExerciseFailed, match="permutation-equivariant"):
        check_permutation_test(PERM_MUTANTS["always True"])
