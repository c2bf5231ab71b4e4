"""Checkers of notebook 02: each passes the reference answer, fails plausible wrong answers, and reports stubs."""

import dataclasses
import math

import pytest
import torch
from _exercise_cases import checker_tests, stub  # noqa: F401

from minigpt.exercises import ExerciseFailed
from minigpt.exercises.nb02 import (
    check_attention_params,
    check_gqa_cache_bytes,
    check_merge_heads,
    check_multi_head_attention,
    check_split_heads,
    check_train_with_heads,
)
from minigpt.model import GPT


# ---- 02.1 / 02.2 split and merge
def split_ref(x, n_head):
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)


def merge_ref(y):
    B, nh, T, hs = y.shape
    return y.transpose(1, 2).contiguous().view(B, T, nh * hs)


SPLIT_MUTANTS = {
    "view straight to (B, nh, T, hs)": lambda x, nh: x.reshape(x.size(0), nh, x.size(1), x.size(2) // nh),
    "no transpose": lambda x, nh: x.view(x.size(0), x.size(1), nh, x.size(2) // nh),
    "interleaved channels": lambda x, nh: x.view(x.size(0), x.size(1), x.size(2) // nh, nh).permute(0, 3, 1, 2),
    "transpose(2, 3) instead of (1, 2)": lambda x, nh: x.view(x.size(0), x.size(1), nh, -1).transpose(1, 3),
}

MERGE_MUTANTS = {
    "reshape without transpose": lambda y: y.reshape(y.size(0), y.size(2), -1),
    "interleaved": lambda y: y.permute(0, 2, 3, 1).reshape(y.size(0), y.size(2), -1),
    "sum over heads": lambda y: y.sum(1),
    "heads in reverse order": lambda y: merge_ref(y.flip(1)),
}


# ---- 02.3 parameters
def params_ref(d_model, n_head, n_kv_head=None, bias=True):
    n_kv_head = n_head if n_kv_head is None else n_kv_head
    hs = d_model // n_head
    kv = n_kv_head * hs
    return 2 * d_model * d_model + 2 * d_model * kv + ((2 * d_model + 2 * kv) if bias else 0)


PARAMS_MUTANTS = {
    "no output projection": lambda d, nh, nkv=None, bias=True: 3 * d * d + (3 * d if bias else 0),
    "no biases": lambda d, nh, nkv=None, bias=True: params_ref(d, nh, nkv, bias=False),
    "ignores n_kv_head": lambda d, nh, nkv=None, bias=True: params_ref(d, nh, None, bias),
    "full projections per head": lambda d, nh, nkv=None, bias=True: nh * params_ref(d, nh, nkv, bias),
    "float result": lambda d, nh, nkv=None, bias=True: float(params_ref(d, nh, nkv, bias)),
}


# ---- 02.4 KV cache bytes
def kv_ref(config, batch_size, bytes_per_value=4):
    nkv = config.n_kv_head or config.n_head
    return 2 * config.n_layer * batch_size * nkv * config.block_size * config.head_size * bytes_per_value


KV_MUTANTS = {
    "keys only": lambda c, b, n=4: kv_ref(c, b, n) // 2,
    "n_head instead of n_kv_head": lambda c, b, n=4: 2 * c.n_layer * b * c.n_embd * c.block_size * n,
    "forgets n_layer": lambda c, b, n=4: kv_ref(c, b, n) // c.n_layer,
    "forgets bytes": lambda c, b, n=4: kv_ref(c, b, 1),
}


# ---- 02.5 multi-head attention
def mha_ref(x, c_attn, c_proj, n_head, causal=True, proj=True, split=split_ref, merge=merge_ref):
    B, T, C = x.shape
    q, k, v = c_attn(x).split(C, dim=2)
    q, k, v = split(q, n_head), split(k, n_head), split(v, n_head)  # (B, nh, T, hs)
    s = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if causal:
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    y = merge(torch.softmax(s, -1) @ v)
    return c_proj(y) if proj else y


MHA_MUTANTS = {
    "no causal mask": lambda x, a, p, nh: mha_ref(x, a, p, nh, causal=False),
    "single head": lambda x, a, p, nh: mha_ref(x, a, p, 1),
    "no output projection": lambda x, a, p, nh: mha_ref(x, a, p, nh, proj=False),
    "wrong split (view to B, nh, T, hs)": lambda x, a, p, nh: mha_ref(x, a, p, nh, split=SPLIT_MUTANTS[
        "view straight to (B, nh, T, hs)"]),
    "merge without transpose": lambda x, a, p, nh: mha_ref(
        x, a, p, nh, merge=MERGE_MUTANTS["reshape without transpose"]
    ),
}


# ---- 02.6 training with another head count
def train_ref(base_config, n_head, steps, get_batch, step=True, keep_n_head=False, fixed_hs=False):
    changes = {} if keep_n_head else {"n_head": n_head}
    if fixed_hs:
        changes["n_embd"] = n_head * base_config.head_size
    model = GPT(dataclasses.replace(base_config, **changes))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        x, y = get_batch()
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        if step:
            opt.step()
        losses.append(loss.item())
    return model, losses


TRAIN_MUTANTS = {
    "ignores n_head": lambda c, nh, s, gb: train_ref(c, nh, s, gb, keep_n_head=True),
    "no optimizer step": lambda c, nh, s, gb: train_ref(c, nh, s, gb, step=False),
    "keeps head size, changes width": lambda c, nh, s, gb: train_ref(c, nh, s, gb, fixed_hs=True),
    "returns only the losses": lambda c, nh, s, gb: train_ref(c, nh, s, gb)[1],
}

CASES = [
    (check_split_heads, split_ref, SPLIT_MUTANTS),
    (check_merge_heads, merge_ref, MERGE_MUTANTS),
    (check_attention_params, params_ref, PARAMS_MUTANTS),
    (check_gqa_cache_bytes, kv_ref, KV_MUTANTS),
    (check_multi_head_attention, mha_ref, MHA_MUTANTS),
    (check_train_with_heads, train_ref, TRAIN_MUTANTS),
]


test_reference_passes, test_mutant_fails, test_stub_not_done = checker_tests(CASES)


def test_messages_speak_in_teaching_terms():
    with pytest.raises(ExerciseFailed, match="TIME axis"):
        check_split_heads(SPLIT_MUTANTS["view straight to (B, nh, T, hs)"])
    with pytest.raises(ExerciseFailed, match="output projection"):
        check_attention_params(PARAMS_MUTANTS["no output projection"])
    with pytest.raises(ExerciseFailed, match="keys AND values"):
        check_gqa_cache_bytes(KV_MUTANTS["keys only"])
    with pytest.raises(ExerciseFailed, match="causal mask"):
        check_multi_head_attention(MHA_MUTANTS["no causal mask"])
    with pytest.raises(ExerciseFailed, match="ONE head"):
        check_multi_head_attention(MHA_MUTANTS["single head"])
    with pytest.raises(ExerciseFailed, match="loss barely moved"):
        check_train_with_heads(TRAIN_MUTANTS["no optimizer step"])
