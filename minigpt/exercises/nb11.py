"""Checkers for notebook 11 (from GPT-2 to Llama).

References are the formulas written out with torch built-ins (``torch.rsqrt``, ``F.silu``,
``repeat_interleave``, ``F.scaled_dot_product_attention``) and a random Hugging Face
``LlamaForCausalLM``, never the student's code. Each likely mistake is computed and named.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._core import ExerciseFailed, checker, expect, forbid

__all__ = ["check_llama_rmsnorm", "check_rope_half", "check_swiglu_mlp", "check_gqa_attention", "check_llama_weights"]


def _close(a, b, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and torch.allclose(a.float(), b.float(), atol=atol, rtol=rtol))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tensor(out, what: str) -> torch.Tensor:
    expect(isinstance(out, torch.Tensor), f"{what} should return a tensor, got {type(out).__name__}")
    return out


def _first_match(got: torch.Tensor, candidates: list[tuple[Callable[[], torch.Tensor], str]]) -> None:
    """Fail with the message of the first known mistake whose output equals ``got``."""
    for make, message in candidates:
        if _close(got, make()):
            raise ExerciseFailed(message)


# ---------------------------------------------------------------- 11.1 RMSNorm


def _rms(x: torch.Tensor, w: torch.Tensor | None, eps: float, dim: int = -1) -> torch.Tensor:
    y = x * torch.rsqrt(x.pow(2).mean(dim, keepdim=True) + eps)
    return y if w is None else y * w


def _rms_mistakes(got: torch.Tensor, x: torch.Tensor, gain: torch.Tensor, eps: float) -> None:
    shape = tuple(x.shape)
    centred = x - x.mean(-1, keepdim=True)
    _first_match(got, [
        (lambda: centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps) * gain,
         "you subtracted the mean first: that is LayerNorm without a bias. RMSNorm does not centre; it only "
         "divides by the root mean square sqrt(mean(x^2) + eps)"),
        (lambda: x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * gain,
         f"for input shape {shape} (a tiny spread) the result is off because eps is outside the square root: "
         "Llama divides by sqrt(mean(x^2) + eps), not sqrt(mean(x^2)) + eps"),
        (lambda: x / (x.pow(2).mean(-1, keepdim=True) + eps) * gain,
         "you divided by the mean square itself: take its square root (torch.rsqrt(ms + eps))"),
        (lambda: _rms(x, None, eps), "the output is normalised but not multiplied by the learned weight (the gain)"),
        *[(lambda d=d: _rms(x, gain, eps, dim=d),
           f"you normalised over dimension {d} (size {shape[d]}); RMSNorm normalises each token's features: the "
           "LAST dimension, mean(-1, keepdim=True)") for d in range(len(shape) - 1)],
    ])


_RMS_BANNED = {n: "the task asks you to write RMSNorm yourself (mean of squares, eps, rsqrt, weight)"
               for n in ("torch.nn.functional.rms_norm", "torch.rms_norm")}


@checker("11.1 RMSNorm, Llama's form")
def check_llama_rmsnorm(norm_class) -> None:
    """``norm_class(dim, eps)``: a module with a ``weight`` of ones, x / sqrt(mean(x^2, last dim) + eps) * weight."""
    cases = [((2, 5, 16), 1e-6, 3.0), ((3, 8), 1e-5, 3.0), ((1, 4, 3, 32), 1e-6, 3.0), ((2, 8), 1e-5, 1e-3)]
    for seed, (shape, eps, scale) in enumerate(cases):
        C = shape[-1]
        m = norm_class(C, eps=eps)
        expect(isinstance(m, nn.Module), f"{norm_class.__name__}(dim, eps) should build an nn.Module")
        w = getattr(m, "weight", None)
        expect(isinstance(w, nn.Parameter) and tuple(w.shape) == (C,),
               "the module has no learnable `weight` of shape (dim,): RMSNorm keeps a per-channel gain, "
               "self.weight = nn.Parameter(torch.ones(dim)) (Llama's norm has no bias)")
        expect(sum(p.numel() for p in m.parameters()) == C,
               f"the module has {sum(p.numel() for p in m.parameters())} parameters; RMSNorm has only the gain "
               f"({C}): no bias, nothing else")
        x = torch.randn(shape, generator=_gen(seed)) * scale + 2 * scale  # non-zero mean: centring is visible
        with torch.no_grad():
            with forbid(_RMS_BANNED):
                fresh = _tensor(m(x.clone()), "forward")
        expect(fresh.shape == x.shape, f"output shape {tuple(fresh.shape)} should equal the input shape {shape}")
        if not _close(fresh, _rms(x, None, eps)) and not _close(fresh, _rms(x, torch.zeros(C), eps)):
            expect(not _close(fresh, _rms(x, w.detach(), eps)), "a new module must start as the plain "
                   "normalisation: initialise weight to ones (torch.ones(dim)), not random values")
        gain = torch.rand(C, generator=_gen(100 + seed)) + 0.5
        with torch.no_grad():
            w.copy_(gain)
            x_in = x.clone()
            with forbid(_RMS_BANNED):
                got = _tensor(m(x_in), "forward")
        expect(torch.equal(x_in, x), "your forward changed its input x in place; compute a new tensor")
        want = _rms(x, gain, eps)
        if _close(got, want):
            continue
        _rms_mistakes(got, x, gain, eps)
        raise ExerciseFailed(f"for input shape {shape} your output differs from x * rsqrt(mean(x^2, -1) + eps) * "
                             f"weight by up to {(got - want).abs().max().item():.3g}")


# ---------------------------------------------------------------- 11.2 RoPE, rotate-half layout


def _angles(T: int, hs: int, offset: int, base: float, exponent: str = "2i") -> torch.Tensor:
    i = torch.arange(0, hs, 2, dtype=torch.float64) if exponent == "2i" else torch.arange(hs // 2, dtype=torch.float64)
    inv_freq = base ** (-i / hs)
    return torch.outer(torch.arange(offset, offset + T, dtype=torch.float64), inv_freq)  # (T, hs/2)


def _rope(x: torch.Tensor, offset: int, base: float, *, layout: str = "half", sign: float = 1.0,
          exponent: str = "2i", tables: str = "cat") -> torch.Tensor:
    T, hs = x.shape[-2], x.shape[-1]
    ang = _angles(T, hs, offset, base, exponent)
    xd = x.double()
    if layout == "interleaved":  # pairs (2i, 2i+1): the original paper's and Meta's checkpoints' layout
        x1, x2 = xd[..., 0::2], xd[..., 1::2]
        c, s = ang.cos(), ang.sin()
        out = torch.stack([x1 * c - sign * x2 * s, x2 * c + sign * x1 * s], dim=-1).flatten(-2)
        return out.to(x.dtype)
    emb = torch.cat([ang, ang], -1) if tables == "cat" else ang.repeat_interleave(2, -1)  # (T, hs)
    x1, x2 = xd.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)  # HF's rotate_half
    return (xd * emb.cos() + sign * rotated * emb.sin()).to(x.dtype)


def _rope_mistakes(got: torch.Tensor, x: torch.Tensor, offset: int, base: float, where: str) -> None:
    _first_match(got, [
        (lambda: _rope(x, offset, base, layout="interleaved"),
         f"{where} you rotated adjacent pairs (2i, 2i+1), the paper's interleaved layout; Hugging Face's Llama "
         "pairs channel i with i + hs/2: rotate_half(x) = cat(-x2, x1) with x1, x2 = the two halves"),
        (lambda: _rope(x, 0, base), f"{where} positions are not offset: the first row of x is position "
         f"{offset}, so the angles use positions offset .. offset + T - 1 (what a KV cache needs)"),
        (lambda: _rope(x, offset, 10000.0), f"{where} you used base 10000 instead of the base argument "
         f"({base:g}); models set rope_theta (SmolLM2: 100000, Llama 3: 500000)"),
        (lambda: _rope(x, offset, base, sign=-1.0), f"{where} you rotated the wrong way: rotate_half(x) is "
         "cat(-x2, x1), and out = x * cos + rotate_half(x) * sin"),
        (lambda: _rope(x, offset, base, exponent="i"), f"{where} the frequencies are off: theta_i = base ** "
         "(-2i / hs) for i = 0 .. hs/2 - 1 (torch.arange(0, hs, 2) / hs), not base ** (-i / hs)"),
        (lambda: _rope(x, offset, base, tables="interleave"), f"{where} you built the (T, hs) cos/sin tables "
         "with repeat_interleave; in the rotate-half layout channel j and j + hs/2 share an angle: "
         "cat([angles, angles], -1)"),
    ])


@checker("11.2 RoPE in Hugging Face's rotate-half layout")
def check_rope_half(my_rope) -> None:
    """``my_rope(x, offset, base)``: x (B, nh, T, hs) rotated for positions offset..offset+T-1, channel i paired
    with i + hs/2 (Hugging Face Llama's ``rotate_half``), frequencies base ** (-2i / hs)."""
    cases = [((2, 3, 5, 8), 0, 10000.0), ((1, 2, 7, 16), 3, 500.0), ((2, 1, 1, 4), 11, 10000.0),
             ((1, 2, 6, 32), 9, 10000.0)]
    for seed, (shape, offset, base) in enumerate(cases):
        x = torch.randn(shape, generator=_gen(seed))
        x_in = x.clone()
        got = _tensor(my_rope(x_in, offset, base), "my_rope")
        expect(torch.equal(x_in, x), "your function changed its input in place; return a new tensor")
        expect(got.shape == x.shape, f"for x of shape {shape} the output has shape {tuple(got.shape)}; RoPE keeps "
               "the shape")
        want = _rope(x, offset, base)
        if _close(got, want):
            continue
        where = f"(x of shape {shape}, offset {offset}, base {base:g})"
        _rope_mistakes(got, x, offset, base, where)
        raise ExerciseFailed(f"{where} your output differs from the rotate-half RoPE by up to "
                             f"{(got - want).abs().max().item():.3g}")


# ---------------------------------------------------------------- 11.3 SwiGLU


def _swiglu_mistakes(got: torch.Tensor, gx: torch.Tensor, ux: torch.Tensor, Wd: torch.Tensor) -> None:
    _first_match(got, [
        (lambda: (F.silu(ux) * gx) @ Wd.T, "gate and up are swapped: SiLU goes on gate_proj(x), which then "
         "multiplies up_proj(x): silu(gate_proj(x)) * up_proj(x)"),
        (lambda: (F.gelu(gx) * ux) @ Wd.T, "you used GELU; Llama's SwiGLU uses SiLU (x * sigmoid(x)) on the gate: "
         "F.silu (GELU there would be GeGLU)"),
        (lambda: (torch.sigmoid(gx) * ux) @ Wd.T, "you used sigmoid(gate): that is the original GLU. SwiGLU uses "
         "silu(gate) = gate * sigmoid(gate)"),
        (lambda: F.silu(gx * ux) @ Wd.T, "SiLU is applied to the product; it belongs on the gate only: "
         "silu(gate_proj(x)) * up_proj(x)"),
        (lambda: (F.relu(gx) * ux) @ Wd.T, "you used ReLU (ReGLU); SwiGLU uses SiLU on the gate"),
        (lambda: F.silu(gx) @ Wd.T, "up_proj is not used: the gate multiplies up_proj(x) element-wise"),
    ])


@checker("11.3 SwiGLU feed-forward")
def check_swiglu_mlp(mlp_class) -> None:
    """``mlp_class(dim, hidden)``: ``gate_proj``, ``up_proj`` (dim -> hidden), ``down_proj`` (hidden -> dim), no
    biases; forward = down_proj(silu(gate_proj(x)) * up_proj(x))."""
    for seed, (dim, hidden, shape) in enumerate([(16, 40, (2, 5)), (8, 24, (3,)), (32, 88, (1, 2, 3))]):
        m = mlp_class(dim, hidden)
        for name, (n_out, n_in) in (("gate_proj", (hidden, dim)), ("up_proj", (hidden, dim)),
                                    ("down_proj", (dim, hidden))):
            layer = getattr(m, name, None)
            expect(isinstance(layer, nn.Linear), f"the module needs a Linear called {name} (Hugging Face's name): "
                   "gate_proj and up_proj map dim -> hidden, down_proj maps hidden -> dim")
            expect(tuple(layer.weight.shape) == (n_out, n_in), f"{name}.weight has shape "
                   f"{tuple(layer.weight.shape)}, expected {(n_out, n_in)} for dim={dim}, hidden={hidden}")
            expect(layer.bias is None, f"{name} has a bias; Llama's MLP has none: nn.Linear(..., bias=False)")
        g = _gen(seed)
        with torch.no_grad():
            for layer in (m.gate_proj, m.up_proj, m.down_proj):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.5)
        x = torch.randn(*shape, dim, generator=g)
        with torch.no_grad():
            got = _tensor(m(x), "forward")
        Wg, Wu, Wd = m.gate_proj.weight.detach(), m.up_proj.weight.detach(), m.down_proj.weight.detach()
        gx, ux = x @ Wg.T, x @ Wu.T
        want = (F.silu(gx) * ux) @ Wd.T
        expect(got.shape[-1] != hidden or got.shape == want.shape,
               f"the output has the hidden width {hidden}, not dim={dim}: the down projection is missing, "
               "return down_proj(silu(gate) * up)")
        expect(got.shape == want.shape, f"output shape {tuple(got.shape)}, expected {tuple(want.shape)}")
        if _close(got, want):
            continue
        _swiglu_mistakes(got, gx, ux, Wd)
        raise ExerciseFailed(f"your output differs from down_proj(silu(gate_proj(x)) * up_proj(x)) by up to "
                             f"{(got - want).abs().max().item():.3g}")


# ---------------------------------------------------------------- 11.4 grouped-query attention


def _causal(q, k, v, scale: float | None = None, causal: bool = True) -> torch.Tensor:
    T = q.size(-2)
    att = q @ k.transpose(-2, -1) * (1 / math.sqrt(q.size(-1)) if scale is None else scale)  # (B, nh, T, T)
    if causal:
        att = att.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return att.softmax(-1) @ v


def _gqa_mistakes(got: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, where: str) -> None:
    B, nh, T, hs = q.shape
    nkv = k.size(1)
    n_rep = nh // nkv
    k_rep, v_rep = k.repeat_interleave(n_rep, 1), v.repeat_interleave(n_rep, 1)
    _first_match(got, [
        (lambda: _causal(q, k.repeat(1, n_rep, 1, 1), v.repeat(1, n_rep, 1, 1)),
         f"{where} query head h used key/value head h % n_kv (torch.repeat / tile order). Hugging Face's "
         "repeat_kv puts the copies of one key/value head next to each other: head h reads h // n_rep "
         "(repeat_interleave, or expand(B, n_kv, n_rep, T, hs).reshape(B, nh, T, hs))"),
        (lambda: _causal(q.view(B, nkv, n_rep, T, hs).mean(2), k, v).repeat_interleave(n_rep, 1),
         f"{where} you averaged the query heads of each group: the queries stay {nh} separate heads; only "
         "the keys and values are shared (repeated)"),
        (lambda: _causal(q, k_rep, v_rep, causal=False), f"{where} the attention is not causal: mask the "
         "positions after each query with -inf before the softmax"),
        (lambda: _causal(q, k_rep, v_rep, scale=1 / math.sqrt(nh * hs)),
         f"{where} you scaled by sqrt(nh * hs); the scale is 1 / sqrt(head size)"),
        (lambda: _causal(q, k_rep, v_rep, scale=1 / math.sqrt(nkv * hs)),
         f"{where} you scaled by sqrt(n_kv * hs); the scale is 1 / sqrt(head size)"),
        (lambda: _causal(q, k_rep, v_rep, scale=1.0), f"{where} the scores are not scaled: divide q k^T by "
         "sqrt(head size)"),
    ])


_SDPA_BANNED = {"torch.nn.functional.scaled_dot_product_attention": "the task asks you to write the attention "
                "(and the key/value sharing) yourself; F.scaled_dot_product_attention(enable_gqa=True) would hide it"}


@checker("11.4 grouped-query attention")
def check_gqa_attention(my_gqa) -> None:
    """``my_gqa(q, k, v)``: q (B, nh, T, hs), k and v (B, n_kv, T, hs) -> causal attention (B, nh, T, hs), query
    head h reading key/value head h // (nh / n_kv), as Hugging Face's ``repeat_kv``."""
    for seed, (B, nh, nkv, T, hs) in enumerate([(2, 6, 2, 5, 8), (1, 4, 4, 6, 4), (2, 4, 1, 3, 8), (1, 8, 4, 7, 4)]):
        g = _gen(seed)
        q, k, v = (torch.randn(B, n, T, hs, generator=g) for n in (nh, nkv, nkv))
        originals = (q.clone(), k.clone(), v.clone())
        with forbid(_SDPA_BANNED):
            got = _tensor(my_gqa(q, k, v), "my_gqa")
        expect(all(torch.equal(a, b) for a, b in zip((q, k, v), originals, strict=True)),
               "your function changed q, k or v in place")
        where = f"(nh={nh} query heads, n_kv={nkv} key/value heads)"
        n_rep = nh // nkv
        expect(got.shape != (B, nkv, T, hs) or nkv == nh, f"{where} the output has {nkv} heads: every one of the "
               f"{nh} query heads keeps its own output; repeat k and v to {nh} heads, do not merge the queries")
        expect(got.shape == q.shape, f"{where} output shape {tuple(got.shape)}, expected {tuple(q.shape)}")
        k_rep, v_rep = k.repeat_interleave(n_rep, 1), v.repeat_interleave(n_rep, 1)
        want = _causal(q, k_rep, v_rep)
        if _close(got, want):
            continue
        _gqa_mistakes(got, q, k, v, where)
        raise ExerciseFailed(f"{where} your output differs from causal attention with repeated keys/values by up "
                             f"to {(got - want).abs().max().item():.3g}")


# ---------------------------------------------------------------- 11.5 weights of a Hugging Face Llama


def _random_hf_llama(seed: int, nh: int, nkv: int, tie: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=72, num_hidden_layers=2,
                      num_attention_heads=nh, num_key_value_heads=nkv, max_position_embeddings=48, rms_norm_eps=1e-6,
                      rope_parameters={"rope_type": "default", "rope_theta": 500.0}, tie_word_embeddings=tie,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None, attn_implementation="eager")
    hf = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norm gains away from 1, so swapped or missing norms change the output
        for p in hf.parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    return hf


def _llama_config(config_class, hf):
    c = hf.config
    fields = dict(vocab_size=c.vocab_size, block_size=c.max_position_embeddings, n_layer=c.num_hidden_layers,
                  n_head=c.num_attention_heads, n_kv_head=c.num_key_value_heads, n_embd=c.hidden_size,
                  d_ff=c.intermediate_size, norm="rmsnorm", position="rope", mlp="swiglu", bias=False,
                  tie=c.tie_word_embeddings, eps=c.rms_norm_eps, rope_base=c.rope_parameters["rope_theta"])
    try:
        return config_class(**fields)
    except TypeError as e:
        raise ExerciseFailed(f"could not build your config with {sorted(fields)} ({e}); pass the notebook's "
                             "Config dataclass") from None


def _meta_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of each head reordered from rotate-half to interleaved pairs (the inverse of what Hugging Face's
    conversion script does to Meta's checkpoints): a mistake here, since the HF weights are already rotate-half."""
    hs = w.size(0) // n_heads
    return w.view(n_heads, 2, hs // 2, -1).transpose(1, 2).reshape(w.shape)


def _reference_map(hf_sd: dict[str, torch.Tensor], n_layer: int, tie: bool) -> dict[str, torch.Tensor]:
    """The notebook's names: transformer.wte / .h.i.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.*_proj} / .ln_f,
    lm_head; c_attn rows [q | k | v]."""
    out = {"transformer.wte.weight": hf_sd["model.embed_tokens.weight"],
           "transformer.ln_f.weight": hf_sd["model.norm.weight"],
           "lm_head.weight": hf_sd["model.embed_tokens.weight"] if tie else hf_sd["lm_head.weight"]}
    for i in range(n_layer):
        p, o = f"model.layers.{i}.", f"transformer.h.{i}."
        out[o + "ln_1.weight"] = hf_sd[p + "input_layernorm.weight"]
        out[o + "ln_2.weight"] = hf_sd[p + "post_attention_layernorm.weight"]
        out[o + "attn.c_attn.weight"] = torch.cat([hf_sd[p + f"self_attn.{n}_proj.weight"] for n in "qkv"])
        out[o + "attn.c_proj.weight"] = hf_sd[p + "self_attn.o_proj.weight"]
        for n in ("gate", "up", "down"):
            out[o + f"mlp.{n}_proj.weight"] = hf_sd[p + f"mlp.{n}_proj.weight"]
    return out


def _diagnose_tensor(name: str, got: torch.Tensor, hf_sd: dict[str, torch.Tensor], i: int, nh: int, nkv: int) -> None:
    p = f"model.layers.{i}."
    W = {n: hf_sd[p + f"self_attn.{n}_proj.weight"] for n in "qkvo"}
    if name.endswith("attn.c_attn.weight"):
        for order in ("kqv", "vkq", "qvk", "kvq", "vqk"):
            expect(not _close(got, torch.cat([W[c] for c in order])), f"{name}: you stacked the projections in the "
                   f"order {'/'.join(order)}; the attention splits c_attn's rows as [q | k | v]")
        expect(not _close(got, torch.cat([_meta_permute(W["q"], nh), _meta_permute(W["k"], nkv), W["v"]])),
               f"{name}: you permuted the q and k rows into interleaved pairs; Hugging Face's Llama weights already "
               "use the rotate-half layout (channel i with i + hs/2), so they are copied as they are")
    if name.endswith("mlp.gate_proj.weight"):
        expect(not _close(got, hf_sd[p + "mlp.up_proj.weight"]), f"{name}: gate_proj and up_proj are swapped")
    if name.endswith("ln_1.weight"):
        expect(not _close(got, hf_sd[p + "post_attention_layernorm.weight"]), f"{name}: ln_1 (before attention) is "
               "input_layernorm; post_attention_layernorm is ln_2, the norm before the MLP")
    for hf_name, w in hf_sd.items():
        if w.dim() == 2 and w.shape[0] != w.shape[1] and _close(got, w.t()):
            raise ExerciseFailed(f"{name}: you transposed {hf_name}. Both Hugging Face's Llama and nn.Linear store "
                                 "(out, in): copy as is (only GPT-2's Conv1D needed a transpose)")
    expect(not (got.dim() == 2 and got.shape[0] == got.shape[1] and _close(got, W["o"].t())),
           f"{name}: you transposed o_proj; nn.Linear and Hugging Face both store (out, in)")


@checker("11.5 a Hugging Face Llama's weights in your model")
@torch.no_grad()
def check_llama_weights(map_fn, model_class, config_class) -> None:
    """``map_fn(hf_state_dict, config) -> dict``: a ``LlamaForCausalLM`` state dict renamed for the notebook's
    ``Llama`` (``model_class(config_class(...))``); then equal logits (atol 1e-5) and equal greedy tokens."""
    for seed, (nh, nkv, tie) in enumerate([(4, 2, False), (4, 4, True)]):
        hf = _random_hf_llama(seed, nh, nkv, tie)
        cfg = _llama_config(config_class, hf)
        model = model_class(cfg).eval()
        hf_sd = {k: v.clone() for k, v in hf.state_dict().items()}
        sd = map_fn(dict(hf_sd), cfg)
        expect(isinstance(sd, dict), f"map_fn should return a dict of tensors, got {type(sd).__name__}")
        what = f"(n_head={nh}, n_kv_head={nkv}, {'tied' if tie else 'untied'} head)"
        ref = _reference_map(hf_sd, cfg.n_layer, tie)
        ours = model.state_dict()
        hf_names = sorted(k for k in sd if k.startswith("model."))
        expect(not hf_names, f"{what} your dict keeps Hugging Face's names ({hf_names[0] if hf_names else ''} ...); "
               "rename them to this notebook's (transformer.h.0.attn.c_attn.weight, ...)")
        missing = sorted(set(ours) - set(sd) - ({"lm_head.weight"} if tie else set()))
        expect("transformer.ln_f.weight" not in missing, f"{what} the final norm transformer.ln_f.weight has no "
               "value: it is model.norm.weight")
        expect("lm_head.weight" not in missing, f"{what} lm_head.weight has no value: this model's head is untied "
               "(tie_word_embeddings=False), copy lm_head.weight")
        expect(not missing, f"{what} your dict has no value for {missing[:4]}")
        extra = sorted(set(sd) - set(ours))
        expect(not extra, f"{what} your dict has names the model does not have: {extra[:4]}")
        for name, want in ref.items():
            if name not in sd:
                continue
            got = sd[name]
            expect(isinstance(got, torch.Tensor), f"{name} should be a tensor, got {type(got).__name__}")
            if _close(got, want, atol=0, rtol=0):
                continue
            if name == "lm_head.weight":
                expect(not _close(got, hf_sd["model.embed_tokens.weight"]), f"{what} lm_head.weight is the token "
                       "embedding, but this model's head is untied: copy Hugging Face's lm_head.weight")
            if name.startswith("transformer.h."):
                _diagnose_tensor(name, got, hf_sd, int(name.split(".")[2]), nh, nkv)
            raise ExerciseFailed(f"{what} {name} does not hold the right Hugging Face tensor (shape "
                                 f"{tuple(got.shape)}, expected {tuple(want.shape)})")
        merged = {**ours, **sd}
        if tie:  # one shared Parameter: load the embedding under both names, or the stale head overwrites it
            merged["lm_head.weight"] = merged["transformer.wte.weight"]
        model.load_state_dict(merged, strict=True)
        ids = torch.randint(0, cfg.vocab_size, (2, 13), generator=_gen(seed))
        logits = model(ids)[0]
        expect(_close(logits, hf(ids).logits, atol=1e-5, rtol=1e-5), f"{what} the tensors are right but the logits "
               "differ from Hugging Face's: is the model class the notebook's Llama?")
        prompt = ids[:1, :4]
        mine = prompt
        for _ in range(10):
            mine = torch.cat([mine, model(mine)[0][:, -1:].argmax(-1)], 1)
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10, do_sample=False,
                             pad_token_id=0)  # the explicit mask: a 0 in the prompt is not padding
        expect(torch.equal(mine, theirs), f"{what} greedy tokens differ from Hugging Face's")
