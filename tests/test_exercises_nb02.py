"""Checkers of notebook 02: each passes the reference answer, fails plausible wrong answers, and reports stubs."""

import dataclasses
import math

import torch
from _exercise_cases import checker_tests, stub  # noqa: F401

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
    "view straight to (B, nh, T, hs)": (lambda x, nh: x.reshape(x.size(0), nh, x.size(1), x.size(2) // nh),
                                        r"TIME axis"),
    "no transpose": (lambda x, nh: x.view(x.size(0), x.size(1), nh, x.size(2) // nh), r"transpose\(1, 2\)"),
    "interleaved channels": (lambda x, nh: x.view(x.size(0), x.size(1), x.size(2) // nh, nh).permute(0, 3, 1, 2),
                             r"interleaved"),
    "transpose(1, 3) instead of (1, 2)": (lambda x, nh: x.view(x.size(0), x.size(1), nh, -1).transpose(1, 3),
                                          r"time and channels are swapped"),
    "permute(0, 2, 3, 1)": (lambda x, nh: x.view(x.size(0), x.size(1), nh, -1).permute(0, 2, 3, 1),
                            r"time and channels are swapped"),
    "hard-coded 4 heads": (lambda x, nh: split_ref(x, 4), r"should be \(B, nh, T, hs\)"),
    "heads in reverse order": (lambda x, nh: split_ref(x, nh).flip(1), r"h-th block"),
}

MERGE_MUTANTS = {
    "reshape without transpose": (lambda y: y.reshape(y.size(0), y.size(2), -1), r"scrambled"),
    "interleaved": (lambda y: y.permute(0, 2, 3, 1).reshape(y.size(0), y.size(2), -1), r"head order"),
    "sum over heads": (lambda y: y.sum(1), r"C = nh\*hs"),
    "heads in reverse order": (lambda y: merge_ref(y.flip(1)), r"head order"),
    "view without contiguous": (lambda y: y.transpose(1, 2).view(y.size(0), y.size(2), -1), r"contiguous"),
    "concatenated along time": (lambda y: torch.cat([y[:, h] for h in range(y.size(1))], dim=1), r"along time"),
    "mean over heads": (lambda y: y.mean(1), r"C = nh\*hs"),
}


# ---- 02.3 parameters
def params_ref(d_model, n_head, n_kv_head=None, bias=True):
    n_kv_head = n_head if n_kv_head is None else n_kv_head
    hs = d_model // n_head
    kv = n_kv_head * hs
    return 2 * d_model * d_model + 2 * d_model * kv + ((2 * d_model + 2 * kv) if bias else 0)


PARAMS_MUTANTS = {
    "no output projection": (lambda d, nh, nkv=None, bias=True: 3 * d * d + (3 * d if bias else 0),
                             r"output projection"),
    "no biases": (lambda d, nh, nkv=None, bias=True: params_ref(d, nh, nkv, bias=False), r"biases"),
    "ignores n_kv_head": (lambda d, nh, nkv=None, bias=True: params_ref(d, nh, None, bias), r"full multi-head"),
    "full projections per head": (lambda d, nh, nkv=None, bias=True: nh * params_ref(d, nh, nkv, bias), r"SHARE"),
    "float result": (lambda d, nh, nkv=None, bias=True: float(params_ref(d, nh, nkv, bias)), r"Python int"),
    "ignores bias=False": (lambda d, nh, nkv=None, bias=True: params_ref(d, nh, nkv, True), r"bias=False"),
    "K/V heads of full width d": (lambda d, nh, nkv=None, bias=True: params_ref(d, nh, None, bias) if nkv is None
                                  else 2 * d * d + 2 * d * nkv * d + ((2 * d + 2 * nkv * d) if bias else 0),
                                  r"full width d"),
    "only W_K shrinks": (lambda d, nh, nkv=None, bias=True: params_ref(d, nh, nkv, bias) if nkv is None
                         else params_ref(d, nh, nkv, bias) + (d + 1) * (d - nkv * (d // nh)), r"keys AND values"),
}


# ---- 02.4 KV cache bytes
def kv_ref(config, batch_size, bytes_per_value=4):
    nkv = config.n_kv_head or config.n_head
    return 2 * config.n_layer * batch_size * nkv * config.block_size * config.head_size * bytes_per_value


def kv_no_none(c, b, n=4):
    return 2 * c.n_layer * b * c.n_kv_head * c.block_size * c.head_size * n


KV_MUTANTS = {
    "keys only": (lambda c, b, n=4: kv_ref(c, b, n) // 2, r"keys AND values"),
    "n_embd per K/V head": (lambda c, b, n=4: kv_ref(c, b, n) * c.n_head, r"n_embd"),
    "n_head instead of n_kv_head": (lambda c, b, n=4: 2 * c.n_layer * b * c.n_embd * c.block_size * n,
                                    r"KEY-VALUE head"),
    "forgets n_layer": (lambda c, b, n=4: kv_ref(c, b, n) // c.n_layer, r"forgot n_layer"),
    "forgets bytes": (lambda c, b, n=4: kv_ref(c, b, 1), r"values, not bytes"),
    "forgets the batch": (lambda c, b, n=4: kv_ref(c, b, n) // b, r"batch size"),
    "always 4 bytes": (lambda c, b, n=4: kv_ref(c, b, 4), r"4 bytes per value whatever"),
    "n_kv_head None not handled": (kv_no_none, r"n_kv_head=None"),
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


def mha_variant(fill=float("-inf"), after=False, scale="hs", order=(0, 1, 2), invert=False):
    def f(x, c_attn, c_proj, n_head):
        B, T, C = x.shape
        parts = c_attn(x).split(C, dim=2)
        q, k, v = (split_ref(parts[i], n_head) for i in order)
        s = q @ k.transpose(-2, -1) / math.sqrt({"hs": q.size(-1), "C": C}[scale])
        allowed = torch.ones(T, T, dtype=torch.bool).tril()
        if not after:
            s = s.masked_fill(allowed if invert else ~allowed, fill)
        w = torch.softmax(s, -1)
        if after:
            w = w * allowed
        return c_proj(merge_ref(w @ v))

    return f


MHA_MUTANTS = {
    "no causal mask": (lambda x, a, p, nh: mha_ref(x, a, p, nh, causal=False), r"causal mask"),
    "single head": (lambda x, a, p, nh: mha_ref(x, a, p, 1), r"ONE head"),
    "no output projection": (lambda x, a, p, nh: mha_ref(x, a, p, nh, proj=False), r"output projection"),
    "wrong split (view to B, nh, T, hs)": (lambda x, a, p, nh: mha_ref(x, a, p, nh, split=SPLIT_MUTANTS[
        "view straight to (B, nh, T, hs)"][0]), r"split or merge"),
    "merge without transpose": (lambda x, a, p, nh: mha_ref(
        x, a, p, nh, merge=MERGE_MUTANTS["reshape without transpose"][0]), r"split or merge"),
    "mask filled with 0": (mha_variant(fill=0.0), r"filled the masked .*with 0"),
    "mask after the softmax": (mha_variant(after=True), r"AFTER the softmax"),
    "scale by sqrt(C)": (mha_variant(scale="C"), r"sqrt\(C\)"),
    "q, k, v taken in the wrong order": (mha_variant(order=(1, 0, 2)), r"\[q \| k \| v\]"),
    "inverted mask": (mha_variant(invert=True), r"NaN.*inverted"),
    "merge with view, no contiguous": (lambda x, a, p, nh: mha_ref(
        x, a, p, nh, merge=MERGE_MUTANTS["view without contiguous"][0]), r"contiguous"),
}


# ---- 02.5 training with another head count
def train_ref(base_config, n_head, steps, get_batch, step=True, keep_n_head=False, fixed_hs=False,
              fresh_opt=False, zero=True, one_batch=False, keep_graph=False, opt_cls=torch.optim.AdamW):
    changes = {} if keep_n_head else {"n_head": n_head}
    if fixed_hs:
        changes["n_embd"] = n_head * base_config.head_size
    model = GPT(dataclasses.replace(base_config, **changes))
    opt = opt_cls(model.parameters(), lr=3e-3)
    losses = []
    batch = get_batch() if one_batch else None
    for _ in range(steps):
        if fresh_opt:
            opt = opt_cls(model.parameters(), lr=3e-3)
        x, y = batch if one_batch else get_batch()
        _, loss = model(x, y)
        if zero:
            opt.zero_grad()
        loss.backward()
        if step:
            opt.step()
        losses.append(loss if keep_graph else loss.item())
    return model, losses


TRAIN_MUTANTS = {
    "ignores n_head": (lambda c, nh, s, gb: train_ref(c, nh, s, gb, keep_n_head=True), r"n_head=4"),
    "no optimizer step": (lambda c, nh, s, gb: train_ref(c, nh, s, gb, step=False), r"stepped 0 times"),
    "keeps head size, changes width": (lambda c, nh, s, gb: train_ref(c, nh, s, gb, fixed_hs=True), r"n_embd"),
    "returns only the losses": (lambda c, nh, s, gb: train_ref(c, nh, s, gb)[1], r"pair"),
    "new optimizer every step": (lambda c, nh, s, gb: train_ref(c, nh, s, gb, fresh_opt=True),
                                 r"new optimizer every step"),
    "never zeroes the gradients": (lambda c, nh, s, gb: train_ref(c, nh, s, gb, zero=False), r"zero_grad"),
    "one batch for every step": (lambda c, nh, s, gb: train_ref(c, nh, s, gb, one_batch=True), r"fresh batch"),
    "appends the loss tensor": (lambda c, nh, s, gb: train_ref(c, nh, s, gb, keep_graph=True), r"loss.item\(\)"),
    "plain SGD": (lambda c, nh, s, gb: train_ref(c, nh, s, gb, opt_cls=torch.optim.SGD), r"AdamW"),
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


def test_library_layer_passes_02_6():
    """minigpt's own MultiHeadAttention, called with the same weights, is a correct answer."""
    from minigpt.attention import MultiHeadAttention

    def lib(x, c_attn, c_proj, n_head):
        m = MultiHeadAttention(x.size(-1), n_head)
        m.c_attn.load_state_dict(c_attn.state_dict())
        m.c_proj.load_state_dict(c_proj.state_dict())
        return m(x, causal=True)[0]

    assert check_multi_head_attention(lib).passed
