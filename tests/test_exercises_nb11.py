"""Checkers of notebook 11: each passes the reference answer, fails plausible wrong answers, and reports stubs."""

import torch
import torch.nn.functional as F
from _exercise_cases import checker_tests, stub  # noqa: F401

from minigpt.exercises.nb11 import check_distinct_n, check_kv_cache_bytes, check_lora_forward, check_quantize_int8
from minigpt.lora import LoRALinear


# ---- 11.1 distinct-n
def distinct_ref(tokens, n):
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def distinct_unigrams(tokens, n):
    return len(set(tokens)) / len(tokens)


def distinct_wrong_denominator(tokens, n):
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(tokens) if grams else 0.0


def distinct_crashes_on_short(tokens, n):
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams)


# ---- 11.2 KV cache bytes
def kv_ref(n_layer, batch, n_head, n_kv_head, seq_len, head_size, nbytes):
    return 2 * n_layer * batch * n_kv_head * seq_len * head_size * nbytes


def kv_keys_only(n_layer, batch, n_head, n_kv_head, seq_len, head_size, nbytes):
    return n_layer * batch * n_kv_head * seq_len * head_size * nbytes


def kv_all_heads(n_layer, batch, n_head, n_kv_head, seq_len, head_size, nbytes):
    return 2 * n_layer * batch * n_head * seq_len * head_size * nbytes


def kv_no_batch(n_layer, batch, n_head, n_kv_head, seq_len, head_size, nbytes):
    return 2 * n_layer * n_kv_head * seq_len * head_size * nbytes


# ---- 11.3 LoRA forward
def lora_ref(x, W, b, A, B, alpha):
    layer = LoRALinear(torch.nn.Linear(W.size(1), W.size(0)), r=A.size(0), alpha=alpha)
    with torch.no_grad():
        layer.base.weight.copy_(W)
        layer.base.bias.copy_(b)
        layer.lora_A.copy_(A)
        layer.lora_B.copy_(B)
    return layer(x).detach()


MUTANTS_LORA = [
    lambda x, W, b, A, B, alpha: F.linear(x, W + alpha * (B @ A), b),            # scale alpha
    lambda x, W, b, A, B, alpha: F.linear(x, W + B @ A, b),                      # no scale
    lambda x, W, b, A, B, alpha: F.linear(x, W, b),                              # ignores the update
    lambda x, W, b, A, B, alpha: F.linear(x, W + (alpha / A.size(0)) * (B @ A), None),   # drops the bias
]


# ---- 11.4 int8
def quant_ref(w):
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    return torch.round(w / scale).clamp(-127, 127).to(torch.int8), scale


def quant_per_tensor(w):
    scale = w.abs().max() / 127
    return torch.round(w / scale).clamp(-127, 127).to(torch.int8), scale.expand(w.size(0), 1)


def quant_truncate(w):
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    return (w / scale).clamp(-127, 127).to(torch.int8), scale   # .to(int8) truncates toward zero


def quant_max_not_abs(w):
    scale = w.amax(dim=1, keepdim=True) / 127
    return torch.round(w / scale).clamp(-127, 127).to(torch.int8), scale


CASES = [
    (check_distinct_n, distinct_ref, [distinct_unigrams, distinct_wrong_denominator, distinct_crashes_on_short]),
    (check_kv_cache_bytes, kv_ref, [kv_keys_only, kv_all_heads, kv_no_batch]),
    (check_lora_forward, lora_ref, MUTANTS_LORA),
    (check_quantize_int8, quant_ref, [quant_per_tensor, quant_truncate, quant_max_not_abs]),
]


test_reference_passes, test_mutant_fails, test_stub_not_done = checker_tests(CASES)
