"""Notebook 11's model, written the way the notebook writes it: the reference answers of its checker tests.

The notebook keeps its own copy (that is the lesson); this one exists so the checkers can be tested
without running the notebook. Shapes: B batch, T time, C n_embd, nh query heads, nkv key/value heads,
hs head size, V vocab.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    vocab_size: int = 65  # tokens the model reads and predicts
    block_size: int = 64  # longest context (rows of the learned position table; RoPE has no table)
    n_layer: int = 4  # blocks stacked
    n_head: int = 4  # query heads per block
    n_kv_head: int | None = None  # key/value heads; None = n_head (multi-head), fewer = grouped-query
    n_embd: int = 128  # width C; each head gets C // n_head channels
    d_ff: int | None = None  # MLP hidden width; None = 4 * n_embd
    norm: str = "layernorm"  # "layernorm" (GPT-2) or "rmsnorm" (Llama)
    position: str = "learned"  # "learned" (GPT-2) or "rope" (Llama)
    mlp: str = "gelu"  # "gelu" (GPT-2's tanh form) or "swiglu" (Llama)
    bias: bool = True  # biases in every Linear and LayerNorm (GPT-2 has them, Llama has none)
    tie: bool = True  # the output layer shares the token embedding's weight
    qk_norm: bool = False  # RMSNorm on every head's q and k before RoPE (Qwen3)
    eps: float = 1e-5  # epsilon inside the norms
    rope_base: float = 10000.0  # RoPE base theta


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)  # channel i is paired with channel i + hs/2
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x, offset=0, base=10000.0):
    T, hs = x.shape[-2], x.shape[-1]  # x: (B, nh, T, hs)
    inv_freq = 1.0 / base ** (torch.arange(0, hs, 2, dtype=torch.int64).float() / hs)  # (hs/2,)
    angles = torch.outer(torch.arange(offset, offset + T, dtype=torch.float32), inv_freq)  # (T, hs/2)
    emb = torch.cat([angles, angles], dim=-1)  # (T, hs): channels j and j + hs/2 share an angle
    return x * emb.cos() + rotate_half(x) * emb.sin()


def repeat_kv(x, n_rep):
    return x.repeat_interleave(n_rep, dim=1)  # (B, nkv, T, hs) -> (B, nkv * n_rep, T, hs), head h reads h // n_rep


def gqa_attention(q, k, v):
    n_rep = q.size(1) // k.size(1)
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, nh, T, hs)
    T = q.size(-2)
    att = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, T, T)
    att = att.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return att.softmax(-1) @ v  # (B, nh, T, hs)


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.nh, self.nkv = config.n_head, config.n_kv_head or config.n_head
        self.hs = config.n_embd // config.n_head
        self.rope, self.base = config.position == "rope", config.rope_base
        self.c_attn = nn.Linear(config.n_embd, (self.nh + 2 * self.nkv) * self.hs, bias=config.bias)  # [q | k | v]
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        if config.qk_norm:
            self.q_norm, self.k_norm = RMSNorm(self.hs, config.eps), RMSNorm(self.hs, config.eps)
        self.qk_norm = config.qk_norm

    def forward(self, x):
        B, T, C = x.shape
        nh, nkv, hs = self.nh, self.nkv, self.hs
        q, k, v = self.c_attn(x).split([nh * hs, nkv * hs, nkv * hs], dim=-1)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope:
            q, k = apply_rope(q, 0, self.base), apply_rope(k, 0, self.base)
        k, v = repeat_kv(k, nh // nkv), repeat_kv(v, nh // nkv)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        d_ff = config.d_ff or 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, d_ff, bias=config.bias)
        self.c_proj = nn.Linear(d_ff, config.n_embd, bias=config.bias)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class SwiGLU(nn.Module):
    def __init__(self, dim, hidden, bias=False):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def make_norm(config):
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, config.eps)
    return nn.LayerNorm(config.n_embd, eps=config.eps, bias=config.bias)


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = Attention(config)
        self.ln_2 = make_norm(config)
        d_ff = config.d_ff or 4 * config.n_embd
        self.mlp = SwiGLU(config.n_embd, d_ff, config.bias) if config.mlp == "swiglu" else MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        layers = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.position == "learned":
            layers["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        layers["h"] = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        layers["ln_f"] = make_norm(config)
        self.transformer = nn.ModuleDict(layers)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx, targets=None):
        T = idx.size(1)
        x = self.transformer.wte(idx)  # (B, T, C)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(torch.arange(T, device=idx.device))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


def llama_state_dict(hf_sd, config):
    """A Hugging Face LlamaForCausalLM state dict renamed for GPT(config): q, k, v fused into c_attn."""
    out = {"transformer.wte.weight": hf_sd["model.embed_tokens.weight"],
           "transformer.ln_f.weight": hf_sd["model.norm.weight"]}
    if not config.tie:
        out["lm_head.weight"] = hf_sd["lm_head.weight"]
    for i in range(config.n_layer):
        p, o = f"model.layers.{i}.", f"transformer.h.{i}."
        out[o + "ln_1.weight"] = hf_sd[p + "input_layernorm.weight"]
        out[o + "ln_2.weight"] = hf_sd[p + "post_attention_layernorm.weight"]
        out[o + "attn.c_attn.weight"] = torch.cat([hf_sd[p + f"self_attn.{n}_proj.weight"] for n in "qkv"])
        out[o + "attn.c_proj.weight"] = hf_sd[p + "self_attn.o_proj.weight"]
        for n in ("gate", "up", "down"):
            out[o + f"mlp.{n}_proj.weight"] = hf_sd[p + f"mlp.{n}_proj.weight"]
    return out
