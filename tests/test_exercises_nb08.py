"""Checkers of notebook 08: each passes the reference answer, fails plausible wrong answers, and reports stubs."""

import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
pytest.importorskip("peft")

from minigpt.exercises import ExerciseFailed  # noqa: E402
from minigpt.exercises.nb08 import (  # noqa: E402
    check_conv1d_to_linear,
    check_group_texts,
    check_lora_count,
    check_perplexity_from_logits,
)


def stub(*args, **kwargs):
    raise NotImplementedError("HINT")


def _ce(logits, labels):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


# ---- 08.1 perplexity
def ppl_ref(logits, labels):
    return math.exp(_ce(logits[:, :-1], labels[:, 1:]).item())


PPL_MUTANTS = {
    "no shift": lambda lg, lb: math.exp(_ce(lg, lb).item()),
    "returns the loss": lambda lg, lb: _ce(lg[:, :-1], lb[:, 1:]).item(),
    "base 2": lambda lg, lb: 2 ** _ce(lg[:, :-1], lb[:, 1:]).item(),
    "counts -100 as a class": lambda lg, lb: math.exp(
        F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), lb[:, 1:].clamp(min=0).reshape(-1)).item()
    ),
    "sum instead of mean": lambda lg, lb: math.exp(
        F.cross_entropy(
            lg[:, :-1].reshape(-1, lg.shape[-1]), lb[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
        ).item()
        / 10
    ),
}


# ---- 08.2 group_texts
def group_ref(examples, block_size):
    joined = {k: sum(v, []) for k, v in examples.items()}
    n = len(joined["input_ids"]) // block_size * block_size
    out = {k: [v[i : i + block_size] for i in range(0, n, block_size)] for k, v in joined.items()}
    out["labels"] = [b.copy() for b in out["input_ids"]]
    return out


def group_padded(examples, block_size):
    joined = {k: sum(v, []) for k, v in examples.items()}
    n = math.ceil(len(joined["input_ids"]) / block_size) * block_size
    joined = {k: v + [0] * (n - len(v)) for k, v in joined.items()}
    out = {k: [v[i : i + block_size] for i in range(0, n, block_size)] for k, v in joined.items()}
    out["labels"] = [b.copy() for b in out["input_ids"]]
    return out


def group_per_row(examples, block_size):
    out = {
        k: [r[i : i + block_size] for r in v for i in range(0, len(r) - block_size + 1, block_size)]
        for k, v in examples.items()
    }
    out["labels"] = [b.copy() for b in out["input_ids"]]
    return out


def group_shifted_labels(examples, block_size):
    out = group_ref(examples, block_size)
    out["labels"] = [b[1:] + [-100] for b in out["input_ids"]]
    return out


def group_no_mask(examples, block_size):
    out = group_ref(examples, block_size)
    del out["attention_mask"]
    return out


GROUP_MUTANTS = {
    "pads the tail": group_padded,
    "chunks each row separately": group_per_row,
    "shifts the labels": group_shifted_labels,
    "drops attention_mask": group_no_mask,
}


# ---- 08.3 LoRA count
def lora_ref(n_layer, n_embd, r):
    return n_layer * r * (n_embd + 3 * n_embd)


LORA_MUTANTS = {
    "one layer only": lambda L, C, r: r * (C + 3 * C),
    "B is (r, C)": lambda L, C, r: L * r * (C + C),
    "full matrices": lambda L, C, r: L * C * 3 * C,
    "A only": lambda L, C, r: L * r * C,
}


# ---- 08.4 Conv1D -> Linear
def conv_ref(conv):
    nx, nf = conv.weight.shape
    lin = torch.nn.Linear(nx, nf)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.T)
        lin.bias.copy_(conv.bias)
    return lin


def conv_no_transpose(conv):
    nx, nf = conv.weight.shape
    lin = torch.nn.Linear(nx, nf)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.reshape(nf, nx))
        lin.bias.copy_(conv.bias)
    return lin


def conv_no_bias(conv):
    nx, nf = conv.weight.shape
    lin = torch.nn.Linear(nx, nf, bias=False)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.T)
    return lin


def conv_zero_bias(conv):
    lin = conv_ref(conv)
    with torch.no_grad():
        lin.bias.zero_()
    return lin


def conv_shares_memory(conv):
    nx, nf = conv.weight.shape
    lin = torch.nn.Linear(nx, nf)
    lin.weight = torch.nn.Parameter(conv.weight.T)
    with torch.no_grad():
        lin.bias.copy_(conv.bias)
    return lin


CONV_MUTANTS = {
    "no transpose": conv_no_transpose,
    "no bias": conv_no_bias,
    "bias left at zero": conv_zero_bias,
    "shares memory": conv_shares_memory,
}

CASES = [
    (check_perplexity_from_logits, ppl_ref, PPL_MUTANTS),
    (check_group_texts, group_ref, GROUP_MUTANTS),
    (check_lora_count, lora_ref, LORA_MUTANTS),
    (check_conv1d_to_linear, conv_ref, CONV_MUTANTS),
]


@pytest.mark.parametrize("check, ref, mutants", CASES, ids=lambda x: getattr(x, "__name__", ""))
def test_reference_passes(check, ref, mutants):
    assert check(ref).status == "passed"


@pytest.mark.parametrize(
    "check, mutant, name",
    [(check, m, name) for check, _, mutants in CASES for name, m in mutants.items()],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_mutants_fail(check, mutant, name):
    with pytest.raises(ExerciseFailed):
        check(mutant)


@pytest.mark.parametrize("check", [c for c, _, _ in CASES], ids=lambda c: c.__name__)
def test_stub_is_not_done(check, capsys):
    result = check(stub)
    assert result.status == "not done" and "not done" in capsys.readouterr().out


def test_failure_messages_teach():
    with pytest.raises(ExerciseFailed, match="shift"):
        check_perplexity_from_logits(PPL_MUTANTS["no shift"])
    with pytest.raises(ExerciseFailed, match="pad"):
        check_group_texts(group_padded)
    with pytest.raises(ExerciseFailed, match="3C"):
        check_lora_count(LORA_MUTANTS["B is \\(r, C\\)".replace("\\", "")])
    with pytest.raises(ExerciseFailed, match="transpose"):
        check_conv1d_to_linear(conv_no_transpose)
