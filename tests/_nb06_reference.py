"""Notebook 06's model, written the way the notebook writes it: the reference answers of its checker tests.

The notebook keeps its own copy (that is the lesson); this one exists so the checkers can be tested
without running the notebook. Shapes: B batch, T time, C n_embd, nh heads, hs head size, V vocab.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    vocab_size: int = 65  # tokens the model reads and predicts
    block_size: int = 64  # longest context
    n_layer: int = 4  # blocks stacked
    n_head: int = 4  # attention heads per block
    n_embd: int = 128  # width C; each head gets C // n_head channels
    dropout: float = 0.0  # dropout on attention weights and residual branches
    bias: bool = True  # biases in Linear and LayerNorm (GPT-2 has them)
    gelu: str = "tanh"  # "tanh" = GPT-2's gelu_new; "none" = exact (erf) GELU
    eps: float = 1e-5  # LayerNorm epsilon (GPT-2: 1e-5)


class MultiHeadAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)  # (B, nh, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~causal, float("-inf"))
        att = self.attn_dropout(F.softmax(att, dim=-1))
        y = att @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side
        return self.resid_dropout(self.c_proj(y))


class FeedForward(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.approximate = config.gelu

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate)))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.eps, bias=config.bias)
        self.attn = MultiHeadAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.eps, bias=config.bias)
        self.mlp = FeedForward(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.eps, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight

    def forward(self, idx, targets=None):
        B, T = idx.shape
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(B * T, -1), targets.view(B * T))
        return logits, loss


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -model.config.block_size:])  # (B, T, V), context cropped
        logits = logits[:, -1, :] / temperature  # (B, V): the last position predicts the next token
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]  # (B, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = F.softmax(logits, dim=-1)
        nxt = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
        idx = torch.cat([idx, nxt], dim=1)
    return idx


CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


@torch.no_grad()
def load_gpt2_weights(model, hf_state_dict):
    ours = model.state_dict()
    for name, w in hf_state_dict.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):  # causal-mask buffers of older transformers
            continue
        if name.endswith(CONV1D):
            w = w.t()  # Conv1D stores (in, out); nn.Linear wants (out, in)
        assert ours[name].shape == w.shape, name
        ours[name].copy_(w)
    return model


@torch.no_grad()
def forward_cached(model, idx, cache):
    """idx (B, T): new tokens; cache: [] or one (k, v) per layer, each (B, nh, S, hs)."""
    B, T = idx.shape
    past = cache[0][0].size(2) if cache else 0  # positions already cached = position of idx[:, 0]
    pos = torch.arange(past, past + T, device=idx.device)  # (T,)
    x = model.transformer.wte(idx) + model.transformer.wpe(pos)  # (B, T, C)
    C = x.size(-1)
    new_cache = []
    for i, block in enumerate(model.transformer.h):
        attn = block.attn
        nh, hs = attn.n_head, C // attn.n_head
        q, k, v = attn.c_attn(block.ln_1(x)).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        if cache:
            k = torch.cat([cache[i][0], k], dim=2)  # (B, nh, S, hs), S = past + T
            v = torch.cat([cache[i][1], v], dim=2)
        new_cache.append((k, v))
        S = k.size(2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)  # (B, nh, T, S)
        mask = torch.ones(T, S, dtype=torch.bool, device=idx.device).tril(diagonal=S - T)  # query t is at S-T+t
        att = F.softmax(att.masked_fill(~mask, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        x = x + attn.c_proj(y)
        x = x + block.mlp(block.ln_2(x))
    logits = model.lm_head(model.transformer.ln_f(x[:, -1, :]))  # (B, V): only the last position is needed
    return logits, new_cache


@torch.no_grad()
def generate_cached(model, idx, max_new_tokens):
    """Greedy decoding with a KV cache; the same tokens as uncached decoding that crops to block_size."""
    bs = model.config.block_size
    cache = []
    for _ in range(max_new_tokens):
        cached = cache[0][0].size(2) if cache else 0
        if cache and cached + 1 <= bs:
            logits, cache = forward_cached(model, idx[:, -1:], cache)  # only the newest token
        else:
            logits, cache = forward_cached(model, idx[:, -bs:], [])  # first step, or the window slid
        idx = torch.cat([idx, logits.argmax(dim=-1, keepdim=True)], dim=1)
    return idx
