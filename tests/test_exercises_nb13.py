"""Checkers of notebook 13: each passes the reference answer, fails plausible wrong answers with a message that
names the mistake, and reports stubs."""

import torch
import torch.nn.functional as F
from _exercise_cases import checker_tests, stub  # noqa: F401

from minigpt.exercises.nb13 import check_distinct_n, check_kv_cache_bytes, check_lora_forward, check_quantize_int8
from minigpt.lora import LoRALinear


# ---- 13.1 distinct-n
def distinct_ref(tokens, n):
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def distinct_unigrams(tokens, n):
    return len(set(tokens)) / len(tokens) if tokens else 0.0


def distinct_wrong_denominator(tokens, n):
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(tokens) if grams else 0.0


def distinct_crashes_on_short(tokens, n):
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams)


def distinct_missing_last(tokens, n):
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def distinct_singletons(tokens, n):  # "unique" read as "occurring once"
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return sum(1 for g in set(grams) if grams.count(g) == 1) / len(grams) if grams else 0.0


def distinct_joined_strings(tokens, n):
    grams = ["".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def distinct_always_bigrams(tokens, n):
    grams = list(zip(tokens, tokens[1:])) if n > 1 else [(t,) for t in tokens]
    return len(set(grams)) / len(grams) if grams else 0.0


def distinct_inverted(tokens, n):
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) / len(set(grams)) if grams else 0.0


def distinct_count(tokens, n):
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return float(len(set(grams)))


DISTINCT_MUTANTS = {
    "unigrams": (distinct_unigrams, r"not single tokens"),
    "divides_by_tokens": (distinct_wrong_denominator, r"not by the number of tokens"),
    "crashes_on_short": (distinct_crashes_on_short, r"instead of dividing by zero"),
    "misses_last_ngram": (distinct_missing_last, r"missed the last"),
    "counts_singletons": (distinct_singletons, r"'unique' means distinct"),
    "joined_strings_collide": (distinct_joined_strings, r"without a separator"),
    "always_bigrams": (distinct_always_bigrams, r"counted pairs whatever n is"),
    "inverted_ratio": (distinct_inverted, r"other way round"),
    "returns_count": (distinct_count, r"not the count"),
}


# ---- 13.2 KV cache bytes
def kv_ref(n_layer, batch, n_head, n_kv_head, seq_len, head_size, nbytes):
    return 2 * n_layer * batch * n_kv_head * seq_len * head_size * nbytes


def kv_mutant(drop=None, times=1):
    def kv(n_layer, batch, n_head, n_kv_head, seq_len, head_size, nbytes):
        f = dict(two=2, n_layer=n_layer, batch=batch, heads=n_kv_head, seq_len=seq_len, head_size=head_size,
                 nbytes=nbytes)
        if drop == "gqa":
            f["heads"] = n_head
        elif drop:
            f[drop] = 1
        out = times
        for v in f.values():
            out *= v
        return out
    return kv


KV_MUTANTS = {
    "keys_only": (kv_mutant("two"), r"keys AND values"),
    "all_query_heads": (kv_mutant("gqa"), r"n_kv_head"),
    "no_batch": (kv_mutant("batch"), r"left out the batch"),
    "no_layers": (kv_mutant("n_layer"), r"left out n_layer"),
    "values_not_bytes": (kv_mutant("nbytes"), r"number of values, not bytes"),
    "bits": (kv_mutant(times=8), r"bits, not bytes"),
    "no_seq_len": (kv_mutant("seq_len"), r"left out seq_len"),
}


# ---- 13.3 LoRA forward
def lora_ref(x, W, b, A, B, alpha):
    layer = LoRALinear(torch.nn.Linear(W.size(1), W.size(0)), r=A.size(0), alpha=alpha)
    with torch.no_grad():
        layer.base.weight.copy_(W)
        layer.base.bias.copy_(b)
        layer.lora_A.copy_(A)
        layer.lora_B.copy_(B)
    return layer(x).detach()


def lora_by_hand(x, W, b, A, B, alpha):  # the notebook's solution, with @ instead of F.linear
    return x @ W.T + b + (alpha / A.shape[0]) * ((x @ A.T) @ B.T)


def lora_merged(x, W, b, A, B, alpha):  # issue 12: right numbers, but the (out, in) update is formed
    return F.linear(x, W + (alpha / A.size(0)) * (B @ A), b)


def lora_update_transposed(x, W, b, A, B, alpha):  # (A^T B^T) is the (in, out) update: also forbidden
    return x @ W.T + b + (alpha / A.size(0)) * (x @ (A.T @ B.T))


def lora_addmm(x, W, b, A, B, alpha):
    return F.linear(x, torch.addmm(W, B, A, alpha=alpha / A.size(0)), b)


def lora_einsum(x, W, b, A, B, alpha):
    return F.linear(x, W, b) + (alpha / A.size(0)) * x @ torch.einsum("or,ri->oi", B, A).T


def lora_in_place(x, W, b, A, B, alpha):
    W += (alpha / A.size(0)) * (B @ A)
    return F.linear(x, W, b)


def lora_with(scale=None, bias="once"):
    def fwd(x, W, b, A, B, alpha):
        r = A.size(0)
        s = (alpha / r) if scale is None else scale(alpha, r)
        base = F.linear(x, W, b if bias != "none" else None)
        out = base + s * F.linear(F.linear(x, A), B)
        return out + b if bias == "twice" else out
    return fwd


def lora_rank_from_wrong_axis(x, W, b, A, B, alpha):
    return F.linear(x, W, b) + (alpha / A.shape[1]) * F.linear(F.linear(x, A), B)


def lora_scales_everything(x, W, b, A, B, alpha):
    return (alpha / A.size(0)) * (F.linear(x, W, b) + F.linear(F.linear(x, A), B))


LORA_MUTANTS = {
    "builds_update_matrix": (lora_merged, r"built the full \(\d+, \d+\) update matrix"),
    "builds_transposed_update": (lora_update_transposed, r"built the full .* update matrix"),
    "addmm_merge": (lora_addmm, r"built the full .* update matrix"),
    "einsum_update": (lora_einsum, r"built the full .* update matrix"),
    "modifies_W_in_place": (lora_in_place, r"in place"),
    "scale_alpha": (lora_with(lambda a, r: a), r"alpha / r, not alpha"),
    "no_scale": (lora_with(lambda a, r: 1.0), r"forgot the scaling"),
    "scale_inverted": (lora_with(lambda a, r: r / a), r"not r / alpha"),
    "ignores_update": (lora_with(lambda a, r: 0.0), r"ignores the LoRA update"),
    "drops_bias": (lora_with(bias="none"), r"dropped the bias"),
    "bias_twice": (lora_with(bias="twice"), r"bias twice"),
    "scales_base_too": (lora_scales_everything, r"only the low-rank update is scaled"),
    "rank_from_wrong_axis": (lora_rank_from_wrong_axis, r"A.shape\[0\]"),
}


# ---- 13.4 int8
def quant_ref(w):
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    return torch.round(w / scale).clamp(-127, 127).to(torch.int8), scale


def quant_per_tensor(w):
    scale = w.abs().max() / 127
    return torch.round(w / scale).clamp(-127, 127).to(torch.int8), scale.expand(w.size(0), 1)


def quant_per_tensor_scalar(w):
    scale = w.abs().max() / 127
    return torch.round(w / scale).clamp(-127, 127).to(torch.int8), scale


def quant_truncate(w):
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    return (w / scale).clamp(-127, 127).to(torch.int8), scale   # .to(int8) truncates toward zero


def quant_max_not_abs(w):
    scale = w.amax(dim=1, keepdim=True) / 127
    return torch.round(w / scale).clamp(-127, 127).to(torch.int8), scale


def quant_flat_scale(w):  # issue 12: (out,) instead of (out, 1)
    scale = w.abs().amax(dim=1) / 127
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def quant_per_column(w):
    scale = w.abs().amax(dim=0, keepdim=True) / 127
    return torch.round(w / scale).clamp(-127, 127).to(torch.int8), scale


def quant_divide_128(w):
    scale = w.abs().amax(dim=1, keepdim=True) / 128
    return torch.round(w / scale).clamp(-128, 127).to(torch.int8), scale


def quant_float_q(w):
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    return torch.round(w / scale).clamp(-127, 127), scale


def quant_inverse_scale(w):
    inv = 127 / w.abs().amax(dim=1, keepdim=True)
    return torch.round(w * inv).clamp(-127, 127).to(torch.int8), inv


def quant_multiplies(w):
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    return torch.round(w * scale).clamp(-127, 127).to(torch.int8), scale


def quant_in_place(w):
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    w /= scale
    return torch.round(w).clamp(-127, 127).to(torch.int8), scale


QUANT_MUTANTS = {
    "per_tensor_expanded": (quant_per_tensor, r"whole matrix"),
    "per_tensor_scalar": (quant_per_tensor_scalar, r"whole matrix"),
    "truncates": (quant_truncate, r"round to the nearest integer"),
    "max_not_abs": (quant_max_not_abs, r"MAGNITUDE"),
    "scale_shape_out": (quant_flat_scale, r"must be \(6, 1\)"),
    "per_column": (quant_per_column, r"one scale per output ROW"),
    "divides_by_128": (quant_divide_128, r"divided by 128"),
    "q_not_int8": (quant_float_q, r"int8 tensor"),
    "inverse_scale": (quant_inverse_scale, r"inverse"),
    "modifies_w_in_place": (quant_in_place, r"in place"),
    "multiplies_by_scale": (quant_multiplies, r"divide by the scale"),
}


CASES = [
    (check_distinct_n, distinct_ref, DISTINCT_MUTANTS),
    (check_kv_cache_bytes, kv_ref, KV_MUTANTS),
    (check_lora_forward, lora_ref, LORA_MUTANTS),
    (check_quantize_int8, quant_ref, QUANT_MUTANTS),
]


def test_other_correct_answers_pass():
    assert check_lora_forward(lora_by_hand).passed
    assert check_kv_cache_bytes(lambda *a: float(kv_ref(*a))).passed


test_reference_passes, test_mutant_fails, test_stub_not_done = checker_tests(CASES)
