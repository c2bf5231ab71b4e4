"""Checkers of notebook 08: each passes the reference answer, fails plausible wrong answers with a message
naming the mistake, and reports stubs as not done."""

import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
pytest.importorskip("peft")

from _exercise_cases import checker_tests, stub  # noqa: E402, F401

from minigpt.exercises.nb08 import (  # noqa: E402
    check_conv1d_to_linear,
    check_group_texts,
    check_lora_count,
    check_perplexity_from_logits,
)


def _ce(logits, labels, **kw):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), **kw)


# ---- 08.1 perplexity
def ppl_ref(logits, labels):
    return math.exp(_ce(logits[:, :-1], labels[:, 1:]).item())


def _row_losses(logits, labels):
    return [_ce(logits[b : b + 1, :-1], labels[b : b + 1, 1:]) for b in range(len(labels))]


def ppl_mean_of_row_means(logits, labels):  # the 7.57-instead-of-9.71 answer
    return math.exp(torch.stack(_row_losses(logits, labels)).mean().item())


def ppl_mean_of_row_ppls(logits, labels):
    return sum(math.exp(l.item()) for l in _row_losses(logits, labels)) / len(labels)


def ppl_divides_by_all_positions(logits, labels):
    lg, lb = logits[:, :-1], labels[:, 1:]
    nll = -lg.log_softmax(-1).gather(-1, lb.clamp(min=0)[..., None])[..., 0]
    return math.exp((nll * (lb != -100)).sum().item() / lb.numel())


def ppl_log2_then_exp(logits, labels):
    lp = logits[:, :-1].log_softmax(-1) / math.log(2)  # log base 2
    lb = labels[:, 1:]
    keep = lb != -100
    nll = -lp.gather(-1, lb.clamp(min=0)[..., None])[..., 0]
    return math.exp(nll[keep].mean().item())


PPL_MUTANTS = {
    "no shift": (lambda lg, lb: math.exp(_ce(lg, lb).item()), r"not shifted"),
    "shifted the wrong way": (lambda lg, lb: math.exp(_ce(lg[:, 1:], lb[:, :-1]).item()), r"wrong way round"),
    "returns the loss": (lambda lg, lb: _ce(lg[:, :-1], lb[:, 1:]).item(), r"returned the loss"),
    "base 2": (lambda lg, lb: 2 ** _ce(lg[:, :-1], lb[:, 1:]).item(), r"2 \*\* loss"),
    "log2 loss then exp": (ppl_log2_then_exp, r"bits"),
    "counts -100 as a class": (lambda lg, lb: math.exp(_ce(lg[:, :-1], lb[:, 1:].clamp(min=0)).item()),
                               r"-100 labels were scored"),
    "sum instead of mean": (lambda lg, lb: math.exp(min(_ce(lg[:, :-1], lb[:, 1:], reduction="sum").item(), 700)),
                            r"SUMMED"),
    "sum / 10": (lambda lg, lb: math.exp(_ce(lg[:, :-1], lb[:, 1:], reduction="sum").item() / 10), r"should be"),
    "mean of per-sequence means": (ppl_mean_of_row_means, r"averaged per-sequence means.*non-ignored"),
    "mean of per-sequence perplexities": (ppl_mean_of_row_ppls, r"per-sequence perplexities"),
    "divides by all positions": (ppl_divides_by_all_positions, r"ALL positions"),
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


def group_per_row_with_tails(examples, block_size):
    out = {k: [r[i : i + block_size] for r in v for i in range(0, len(r), block_size)] for k, v in examples.items()}
    out["labels"] = [b.copy() for b in out["input_ids"]]
    return out


def group_keeps_partial(examples, block_size):
    joined = {k: sum(v, []) for k, v in examples.items()}
    out = {k: [v[i : i + block_size] for i in range(0, len(v), block_size)] for k, v in joined.items()}
    out["labels"] = [b.copy() for b in out["input_ids"]]
    return out


def group_drops_last_full_block(examples, block_size):
    joined = {k: sum(v, []) for k, v in examples.items()}
    n = len(joined["input_ids"]) // block_size * block_size
    out = {k: [v[i : i + block_size] for i in range(0, n - block_size, block_size)] for k, v in joined.items()}
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


def group_hard_coded_columns(examples, block_size):
    return group_ref({k: examples[k] for k in ("input_ids", "attention_mask")}, block_size)


def group_mask_not_grouped(examples, block_size):
    out = group_ref(examples, block_size)
    out["attention_mask"] = examples["attention_mask"]
    return out


GROUP_MUTANTS = {
    "pads the tail": (group_padded, r"padded"),
    "chunks each row separately": (group_per_row, r"cut each row on its own"),
    "chunks each row separately, keeping each row's tail": (group_per_row_with_tails, r"cut each row on its own"),
    "keeps the partial last block": (group_keeps_partial, r"kept the partial block"),
    "drops the last full block": (group_drops_last_full_block, r"last FULL block"),
    "shifts the labels": (group_shifted_labels, r"do NOT shift"),
    "drops attention_mask": (group_no_mask, r"no 'attention_mask' column"),
    "hard-codes the column names": (group_hard_coded_columns, r"EVERY input column"),
    "attention_mask left ungrouped": (group_mask_not_grouped, r"grouped exactly like input_ids"),
}


# ---- 08.3 LoRA count
def lora_ref(n_layer, n_embd, r):
    return n_layer * r * (n_embd + 3 * n_embd)


LORA_MUTANTS = {
    "one layer only": (lambda L, C, r: r * (C + 3 * C), r"ONE layer"),
    "B is (r, C)": (lambda L, C, r: L * r * (C + C), r"\(r, 3C\), not \(r, C\)"),
    "full matrices": (lambda L, C, r: L * C * 3 * C, r"full c_attn weights"),
    "A only": (lambda L, C, r: L * r * C, r"only A"),
    "B only": (lambda L, C, r: L * r * 3 * C, r"only B"),
    "adds c_attn's bias": (lambda L, C, r: L * (r * 4 * C + 3 * C), r"no bias"),
    "c_attn and c_proj": (lambda L, C, r: L * (r * 4 * C + r * 2 * C), r"c_proj"),
    "separate q, k, v adapters": (lambda L, C, r: L * 3 * r * 2 * C, r"fused"),
    "forgets the rank": (lambda L, C, r: L * (C + 3 * C), r"left out the rank"),
    "float result": (lambda L, C, r: float(lora_ref(L, C, r)), r"return an int"),
}


# ---- 08.4 Conv1D -> Linear
def conv_ref(conv):
    nx, nf = conv.weight.shape
    lin = torch.nn.Linear(nx, nf)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.T)
        lin.bias.copy_(conv.bias)
    return lin


def conv_reshape(conv):
    nx, nf = conv.weight.shape
    lin = torch.nn.Linear(nx, nf)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.reshape(nf, nx))
        lin.bias.copy_(conv.bias)
    return lin


def conv_swapped_dims_no_transpose(conv):  # Linear(out, in) so that the weight copies without a transpose
    nx, nf = conv.weight.shape
    lin = torch.nn.Linear(nf, nx)
    with torch.no_grad():
        lin.weight.copy_(conv.weight)
        if nf == nx:
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


def conv_shares_bias(conv):
    lin = conv_ref(conv)
    lin.bias = conv.bias
    return lin


def conv_no_grad_missing(conv):  # in-place copy into a leaf that requires grad: torch raises
    nx, nf = conv.weight.shape
    lin = torch.nn.Linear(nx, nf)
    lin.weight.copy_(conv.weight.T)
    return lin


CONV_MUTANTS = {
    "reshape instead of transpose": (conv_reshape, r"transpos"),
    "Linear(out, in) without transpose": (conv_swapped_dims_no_transpose, r"without transposing"),
    "no bias": (conv_no_bias, r"no bias"),
    "bias left at zero": (conv_zero_bias, r"miss the bias"),
    "shares memory": (conv_shares_memory, r"shares memory"),
    "bias shared": (conv_shares_bias, r"bias IS the Conv1D's bias"),
    "copy_ outside torch.no_grad()": (conv_no_grad_missing, r"in-place operation.*line"),
}

CASES = [
    (check_perplexity_from_logits, ppl_ref, PPL_MUTANTS),
    (check_group_texts, group_ref, GROUP_MUTANTS),
    (check_lora_count, lora_ref, LORA_MUTANTS),
    (check_conv1d_to_linear, conv_ref, CONV_MUTANTS),
]

test_reference_passes, test_mutant_fails, test_stub_not_done = checker_tests(CASES)


def test_perplexity_inputs_separate_global_and_per_row_means():
    """The inputs include rows with different numbers of -100 labels, where the two means really differ."""
    from minigpt.exercises.nb08 import _ppl_mistakes, _ref_ppl

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 8, 9, generator=g) * 3
    labels = torch.randint(0, 9, (2, 8), generator=g)
    labels[1, 1:6] = -100
    per_row = ppl_mean_of_row_means(logits, labels)
    assert not math.isclose(per_row, _ref_ppl(logits, labels), rel_tol=1e-2)
    assert any(math.isclose(per_row, v, rel_tol=1e-6) for v, _ in _ppl_mistakes(logits, labels))


def test_library_agrees_with_the_checkers():
    from minigpt.hf.data import group_texts

    assert check_group_texts(group_texts).passed
