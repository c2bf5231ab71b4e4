"""Checkers of notebook 11: each passes the reference answer, fails plausible wrong answers with a message that
names the mistake, and reports stubs as "not done"."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from _exercise_cases import checker_tests
from _nb11_reference import GPT, Config, RMSNorm, SwiGLU, apply_rope, gqa_attention, llama_state_dict, rotate_half

from minigpt.exercises.nb11 import (
    check_gqa_attention,
    check_llama_rmsnorm,
    check_llama_weights,
    check_rope_half,
    check_swiglu_mlp,
)

pytest.importorskip("transformers")


# ---- 11.1 RMSNorm: mutants override forward (or __init__)
def rms_mutant(forward, init_weight=None):
    class Mutant(RMSNorm):
        def __init__(self, dim, eps=1e-6):
            super().__init__(dim, eps)
            if init_weight is not None:
                self.weight = nn.Parameter(init_weight(dim))

        def forward(self, x):
            return forward(self, x)

    return Mutant


def _ms(x, dim=-1):
    return x.pow(2).mean(dim, keepdim=True)


class NoWeight(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(_ms(x) + self.eps)


class WithBias(RMSNorm):
    def __init__(self, dim, eps=1e-6):
        super().__init__(dim, eps)
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return super().forward(x) + self.bias


RMS_MUTANTS = {
    "subtracts the mean": (rms_mutant(lambda m, x: (x - x.mean(-1, keepdim=True)) * torch.rsqrt(
        _ms(x - x.mean(-1, keepdim=True)) + m.eps) * m.weight), r"subtracted the mean.*LayerNorm"),
    "eps outside sqrt": (rms_mutant(lambda m, x: x / (_ms(x).sqrt() + m.eps) * m.weight), r"eps is outside"),
    "no square root": (rms_mutant(lambda m, x: x / (_ms(x) + m.eps) * m.weight), r"square root"),
    "weight not applied": (rms_mutant(lambda m, x: x * torch.rsqrt(_ms(x) + m.eps)), r"not multiplied by the learned"),
    "over dim 0": (rms_mutant(lambda m, x: x * torch.rsqrt(_ms(x, 0) + m.eps) * m.weight),
                   r"normalised over dimension 0"),
    "over dim -2": (rms_mutant(lambda m, x: x * torch.rsqrt(_ms(x, -2) + m.eps) * m.weight),
                    r"over dimension \d.*LAST"),
    "no weight parameter": (NoWeight, r"no learnable `weight`"),
    "a bias too": (WithBias, r"no bias"),
    "random initial weight": (rms_mutant(lambda m, x: x * torch.rsqrt(_ms(x) + m.eps) * m.weight,
                                         init_weight=lambda d: torch.rand(d) + 0.5), r"initialise weight to ones"),
    "uses F.rms_norm": (rms_mutant(lambda m, x: F.rms_norm(x, (x.size(-1),), m.weight, m.eps)), r"calls .*rms_norm"),
}


# ---- 11.2 RoPE
def rope_from(angles_fn, pair="half", sign=1.0, tables="cat"):
    def rope(x, offset, base):
        T, hs = x.shape[-2], x.shape[-1]
        ang = angles_fn(T, hs, offset, base)  # (T, hs/2)
        if pair == "interleaved":
            x1, x2 = x[..., 0::2], x[..., 1::2]
            return torch.stack([x1 * ang.cos() - x2 * ang.sin(), x2 * ang.cos() + x1 * ang.sin()], -1).flatten(-2)
        emb = torch.cat([ang, ang], -1) if tables == "cat" else ang.repeat_interleave(2, -1)
        return x * emb.cos() + sign * rotate_half(x) * emb.sin()

    return rope


def _ang(T, hs, offset, base, start=None, step=2):
    i = torch.arange(0, hs, step)[: hs // 2].float()
    first = offset if start is None else start
    return torch.outer(torch.arange(first, first + T).float(), 1.0 / base ** (i / hs))


ROPE_MUTANTS = {
    "interleaved pairs": (rope_from(_ang, pair="interleaved"), r"adjacent pairs.*interleaved"),
    "positions not offset": (rope_from(lambda T, hs, o, b: _ang(T, hs, o, b, start=0)), r"not offset"),
    "base 10000 hard-coded": (rope_from(lambda T, hs, o, b: _ang(T, hs, o, 10000.0)), r"base 10000 instead"),
    "rotates the wrong way": (rope_from(_ang, sign=-1.0), r"wrong way"),
    "exponent i / hs": (rope_from(lambda T, hs, o, b: _ang(T, hs, o, b, step=1)), r"frequencies are off"),
    "tables repeat_interleave": (rope_from(_ang, tables="interleave"), r"repeat_interleave"),
    "no rotation at all": (lambda x, offset, base: x.clone(), r"differs from the rotate-half RoPE"),
    "in place": (lambda x, offset, base: x.copy_(apply_rope(x, offset, base)), r"in place"),
}


# ---- 11.3 SwiGLU
def swiglu_mutant(forward):
    class Mutant(SwiGLU):
        def __init__(self, dim, hidden):
            super().__init__(dim, hidden)

        def forward(self, x):
            return forward(self, x)

    return Mutant


class SwiGLUWithBias(SwiGLU):
    def __init__(self, dim, hidden):
        super().__init__(dim, hidden, bias=True)


class SwiGLUOtherNames(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w1, self.w3 = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


SWIGLU_MUTANTS = {
    "gate and up swapped": (swiglu_mutant(lambda m, x: m.down_proj(F.silu(m.up_proj(x)) * m.gate_proj(x))),
                            r"gate and up are swapped"),
    "GELU instead of SiLU": (swiglu_mutant(lambda m, x: m.down_proj(F.gelu(m.gate_proj(x)) * m.up_proj(x))), r"GELU"),
    "sigmoid (GLU)": (swiglu_mutant(lambda m, x: m.down_proj(torch.sigmoid(m.gate_proj(x)) * m.up_proj(x))),
                      r"sigmoid.*original GLU"),
    "SiLU of the product": (swiglu_mutant(lambda m, x: m.down_proj(F.silu(m.gate_proj(x) * m.up_proj(x)))),
                            r"applied to the product"),
    "ReLU": (swiglu_mutant(lambda m, x: m.down_proj(F.relu(m.gate_proj(x)) * m.up_proj(x))), r"ReLU"),
    "no down projection": (swiglu_mutant(lambda m, x: F.silu(m.gate_proj(x)) * m.up_proj(x)),
                           r"down projection is missing"),
    "up unused": (swiglu_mutant(lambda m, x: m.down_proj(F.silu(m.gate_proj(x)))), r"up_proj is not used"),
    "biases": (SwiGLUWithBias, r"has a bias"),
    "Meta's names": (SwiGLUOtherNames, r"Linear called gate_proj"),
}


# ---- 11.4 grouped-query attention
def _attend(q, k, v, scale=None, causal=True):
    T = q.size(-2)
    att = q @ k.transpose(-2, -1) * (1 / math.sqrt(q.size(-1)) if scale is None else scale)
    if causal:
        att = att.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return att.softmax(-1) @ v


def gqa_tiled(q, k, v):
    n = q.size(1) // k.size(1)
    return _attend(q, k.repeat(1, n, 1, 1), v.repeat(1, n, 1, 1))


def gqa_mean_queries(q, k, v):
    B, nh, T, hs = q.shape
    n = nh // k.size(1)
    return _attend(q.view(B, k.size(1), n, T, hs).mean(2), k, v).repeat_interleave(n, 1)


def gqa_reduced_output(q, k, v):
    B, nh, T, hs = q.shape
    n = nh // k.size(1)
    return _attend(q.view(B, k.size(1), n, T, hs).mean(2), k, v)


def gqa_not_causal(q, k, v):
    n = q.size(1) // k.size(1)
    return _attend(q, k.repeat_interleave(n, 1), v.repeat_interleave(n, 1), causal=False)


def gqa_scale_model_width(q, k, v):
    n = q.size(1) // k.size(1)
    return _attend(q, k.repeat_interleave(n, 1), v.repeat_interleave(n, 1), scale=1 / math.sqrt(q.size(1) * q.size(-1)))


def gqa_unscaled(q, k, v):
    n = q.size(1) // k.size(1)
    return _attend(q, k.repeat_interleave(n, 1), v.repeat_interleave(n, 1), scale=1.0)


def gqa_sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def gqa_repeat_time(q, k, v):
    n = q.size(1) // k.size(1)
    return _attend(q, k.repeat_interleave(n, 2), v.repeat_interleave(n, 2))


GQA_MUTANTS = {
    "repeat (tile) order": (gqa_tiled, r"h % n_kv.*repeat_interleave"),
    "averaged query heads": (gqa_mean_queries, r"averaged the query heads"),
    "queries reduced to n_kv heads": (gqa_reduced_output, r"do not merge the queries"),
    "not causal": (gqa_not_causal, r"not causal"),
    "scale sqrt(C)": (gqa_scale_model_width, r"sqrt\(nh \* hs\)"),
    "unscaled": (gqa_unscaled, r"not scaled"),
    "sdpa with enable_gqa": (gqa_sdpa, r"calls .*scaled_dot_product_attention"),
    "repeated along time": (gqa_repeat_time, r"raised|shape"),
}


# ---- 11.5 weights
def _map_then(change):
    def map_fn(hf_sd, config):
        out = llama_state_dict(hf_sd, config)
        change(out, hf_sd, config)
        return out

    return map_fn


def _each_layer(fn):
    def change(out, hf_sd, config):
        for i in range(config.n_layer):
            fn(out, hf_sd, f"model.layers.{i}.", f"transformer.h.{i}.", config)

    return change


def _kqv(out, hf_sd, p, o, c):
    out[o + "attn.c_attn.weight"] = torch.cat([hf_sd[p + f"self_attn.{n}_proj.weight"] for n in "kqv"])


def _permute(w, n):
    hs = w.size(0) // n
    return w.view(n, 2, hs // 2, -1).transpose(1, 2).reshape(w.shape)


def _meta_permuted(out, hf_sd, p, o, c):
    q, k, v = (hf_sd[p + f"self_attn.{n}_proj.weight"] for n in "qkv")
    out[o + "attn.c_attn.weight"] = torch.cat([_permute(q, c.n_head), _permute(k, c.n_kv_head), v])


def _gate_up_swapped(out, hf_sd, p, o, c):
    out[o + "mlp.gate_proj.weight"], out[o + "mlp.up_proj.weight"] = hf_sd[p + "mlp.up_proj.weight"], hf_sd[
        p + "mlp.gate_proj.weight"]


def _norms_swapped(out, hf_sd, p, o, c):
    out[o + "ln_1.weight"], out[o + "ln_2.weight"] = out[o + "ln_2.weight"], out[o + "ln_1.weight"]


def _transposed_down(out, hf_sd, p, o, c):
    out[o + "mlp.down_proj.weight"] = hf_sd[p + "mlp.down_proj.weight"].t()


def _transposed_o(out, hf_sd, p, o, c):
    out[o + "attn.c_proj.weight"] = hf_sd[p + "self_attn.o_proj.weight"].t()


def _tied_head(out, hf_sd, config):
    out["lm_head.weight"] = hf_sd["model.embed_tokens.weight"]


def _no_head(out, hf_sd, config):
    out.pop("lm_head.weight", None)


def _no_final_norm(out, hf_sd, config):
    out.pop("transformer.ln_f.weight")


def _hf_names(out, hf_sd, config):
    out.clear()
    out.update(hf_sd)


WEIGHT_MUTANTS = {
    "q, k, v stacked as k, q, v": (_map_then(_each_layer(_kqv)), r"order k/q/v"),
    "q and k rows permuted for interleaved RoPE": (_map_then(_each_layer(_meta_permuted)),
                                                   r"permuted the q and k rows"),
    "gate and up swapped": (_map_then(_each_layer(_gate_up_swapped)), r"gate_proj and up_proj are swapped"),
    "the two norms swapped": (_map_then(_each_layer(_norms_swapped)), r"input_layernorm.*post_attention_layernorm"),
    "down_proj transposed (Conv1D habit)": (_map_then(_each_layer(_transposed_down)), r"transposed .*down_proj"),
    "o_proj transposed": (_map_then(_each_layer(_transposed_o)), r"transposed o_proj"),
    "head tied to the embedding": (_map_then(_tied_head), r"head is untied"),
    "no lm_head": (_map_then(_no_head), r"lm_head.weight has no value"),
    "no final norm": (_map_then(_no_final_norm), r"final norm"),
    "Hugging Face's names kept": (_map_then(_hf_names), r"keeps Hugging Face's names"),
}


def _weights_checker(fn):
    return check_llama_weights(fn, GPT, Config)


_weights_checker.__name__ = "check_llama_weights"

test_reference_passes, test_mutant_fails, test_stub_not_done = checker_tests([
    (check_llama_rmsnorm, RMSNorm, RMS_MUTANTS),
    (check_rope_half, apply_rope, ROPE_MUTANTS),
    (check_swiglu_mlp, SwiGLU, SWIGLU_MUTANTS),
    (check_gqa_attention, gqa_attention, GQA_MUTANTS),
    (_weights_checker, llama_state_dict, WEIGHT_MUTANTS),
])


def test_reference_model_equals_the_library_llama():
    """The reference notebook model with mapped weights equals minigpt.GPT loaded by llama_to_minigpt."""
    from minigpt.exercises.nb11 import _llama_config, _random_hf_llama
    from minigpt.hf.convert import llama_to_minigpt

    hf = _random_hf_llama(5, 4, 2, False)
    cfg = _llama_config(Config, hf)
    ours = GPT(cfg).eval()
    ours.load_state_dict(llama_state_dict(hf.state_dict(), cfg))
    lib = llama_to_minigpt(hf)
    ids = torch.randint(0, cfg.vocab_size, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids)[0], lib(ids)[0], atol=1e-5, rtol=1e-5)


def test_the_notebook_defines_the_reference_model_word_for_word():
    """The checker tests use _nb11_reference.py; the notebook's own model must be the same code, not a drifted copy."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    ref = (root / "tests" / "_nb11_reference.py").read_text(encoding="utf-8")
    cells = json.loads((root / "notebooks" / "11_gpt2_to_llama.ipynb").read_text(encoding="utf-8"))["cells"]
    sources = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    names = ("class Config", "class RMSNorm", "def rotate_half", "def apply_rope", "def repeat_kv", "class Attention",
             "class SwiGLU", "def make_norm", "class Block", "class GPT", "def llama_state_dict")
    for name in names:
        cell = next((s for s in sources if f"\n{name}" in f"\n{s}"), None)
        assert cell is not None, f"the notebook no longer defines {name}"
        start = f"\n{cell}".index(f"\n{name}")
        block = cell[start:].split("\n\n\n")[0].strip()  # the definition, up to the next top-level item
        assert block in ref, f"the notebook's {name} differs from tests/_nb11_reference.py"
