"""Checkers of notebook 06: each passes the reference answer, fails plausible wrong answers, and reports stubs."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from _exercise_cases import checker_tests
from _nb06_reference import (
    CONV1D,
    GPT,
    Block,
    Config,
    FeedForward,
    MultiHeadAttention,
    forward_cached,
    generate,
    generate_cached,
    load_gpt2_weights,
)

from minigpt.exercises.nb06 import (
    check_gpt2_weights,
    check_gpt_attention,
    check_gpt_block,
    check_gpt_generate,
    check_gpt_lm,
    check_kv_cache_generation,
)


def _stub_class(*args, **kwargs):
    raise NotImplementedError("HINT")


# ---- 06.1 attention: the reference is the notebook's class; mutants override forward
def _attention(x, attn, *, causal=True, fill=float("-inf"), scale="hs", proj=True, merge_ok=True, order="qkv",
               softmax_dim=-1, sdpa=False, diagonal=0):
    B, T, C = x.shape
    nh = attn.n_head
    hs = C // nh
    parts = dict(zip("qkv", attn.c_attn(x).split(C, dim=2)))
    q, k, v = (parts[c].view(B, T, nh, hs).transpose(1, 2) for c in order)  # (B, nh, T, hs)
    if sdpa:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        att = q @ k.transpose(-2, -1) / {"hs": math.sqrt(hs), "C": math.sqrt(C), "none": 1.0}[scale]
        if causal:
            att = att.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(diagonal), fill)
        y = F.softmax(att, dim=softmax_dim) @ v  # (B, nh, T, hs)
    y = y.transpose(1, 2).contiguous().view(B, T, C) if merge_ok else y.reshape(B, T, C)
    return attn.c_proj(y) if proj else y


def attention_mutant(**kw):
    class Mutant(MultiHeadAttention):
        def forward(self, x):
            return _attention(x, self, **kw)

    return Mutant


ATTENTION_MUTANTS = {
    "no causal mask": (attention_mutant(causal=False), r"no causal mask"),
    "masked scores set to 0": (attention_mutant(fill=0.0), r"-inf"),
    "scale by sqrt(C)": (attention_mutant(scale="C"), r"sqrt\(head size\)"),
    "no scaling": (attention_mutant(scale="none"), r"not scaled"),
    "no output projection": (attention_mutant(proj=False), r"c_proj"),
    "merge without transpose": (attention_mutant(merge_ok=False), r"mixes tokens"),
    "softmax over queries": (attention_mutant(softmax_dim=-2), r"dim=-1"),
    "q and k swapped": (attention_mutant(order="kqv"), r"swapped"),
    "uses sdpa": (attention_mutant(sdpa=True), r"scaled_dot_product_attention"),
    "mask hides the diagonal": (attention_mutant(diagonal=-1), r"see ITSELF"),
}


# ---- 06.2 block
def block_mutant(kind):
    class Mutant(Block):
        def forward(self, x):
            if kind == "post-LN":
                x = self.ln_1(x + self.attn(x))
                return self.ln_2(x + self.mlp(x))
            if kind == "no attention residual":
                x = self.attn(self.ln_1(x))
                return x + self.mlp(self.ln_2(x))
            if kind == "no mlp residual":
                x = x + self.attn(self.ln_1(x))
                return self.mlp(self.ln_2(x))
            if kind == "ln_1 twice":
                x = x + self.attn(self.ln_1(x))
                return x + self.mlp(self.ln_1(x))
            if kind == "normalised stream":
                x = self.ln_1(x)
                x = x + self.attn(x)
                x = self.ln_2(x)
                return x + self.mlp(x)
            if kind == "parallel":
                return x + self.attn(self.ln_1(x)) + self.mlp(self.ln_2(x))
            raise AssertionError(kind)

    return Mutant


BLOCK_MUTANTS = {
    "post-LN": (block_mutant("post-LN"), r"post-LN"),
    "no attention residual": (block_mutant("no attention residual"), r"attention sub-layer has no residual"),
    "no mlp residual": (block_mutant("no mlp residual"), r"feed-forward sub-layer has no residual"),
    "ln_1 used twice": (block_mutant("ln_1 twice"), r"ln_2"),
    "normalises the residual stream": (block_mutant("normalised stream"), r"residual stream"),
    "parallel branches": (block_mutant("parallel"), r"same x"),
}


# ---- 06.3 language model
def lm_mutant(kind):
    class Mutant(GPT):
        def __init__(self, config):
            super().__init__(config)
            if kind == "untied":
                self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
            if kind == "tied by copy":
                self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
                self.lm_head.weight.data.copy_(self.transformer.wte.weight.data)

        def forward(self, idx, targets=None):
            t = self.transformer
            B, T = idx.shape
            x = t.wte(idx)
            if kind != "no positions":
                x = x + (t.wpe(idx) if kind == "positions from tokens" else t.wpe(torch.arange(T)))
            for block in t.h:
                x = block(x)
            logits = self.lm_head(x if kind == "no ln_f" else t.ln_f(x))
            if kind == "probabilities":
                logits = F.softmax(logits, dim=-1)
            if targets is None:
                return logits if kind == "logits only" else (logits, None)
            V = logits.size(-1)
            if kind == "softmax then cross_entropy":
                return logits, F.cross_entropy(F.softmax(logits, -1).view(-1, V), targets.view(-1))
            if kind == "sum loss":
                return logits, F.cross_entropy(logits.view(-1, V), targets.view(-1), reduction="sum")
            if kind == "shifted again":
                return logits, F.cross_entropy(logits[:, :-1].reshape(-1, V), targets[:, 1:].reshape(-1))
            if kind == "last position only":
                return logits, F.cross_entropy(logits[:, -1], targets[:, -1])
            return logits, F.cross_entropy(logits.view(-1, V), targets.view(-1))

    return Mutant


LM_MUTANTS = {
    "untied": (lm_mutant("untied"), r"not tied"),
    "tied by copying values": (lm_mutant("tied by copy"), r"COPY"),
    "no positions": (lm_mutant("no positions"), r"position embedding is missing"),
    "positions looked up with token ids": (lm_mutant("positions from tokens"), r"wpe\(idx\)"),
    "no final LayerNorm": (lm_mutant("no ln_f"), r"ln_f"),
    "returns logits only": (lm_mutant("logits only"), r"\(logits, loss\)"),
    "summed loss": (lm_mutant("sum loss"), r"SUM"),
    "softmax before cross_entropy": (lm_mutant("softmax then cross_entropy"), r"softmax before F.cross_entropy"),
    "returns probabilities": (lm_mutant("probabilities"), r"returned probabilities"),
    "targets shifted again": (lm_mutant("shifted again"), r"shifted the targets again"),
    "loss of the last position only": (lm_mutant("last position only"), r"only the last position"),
}


# ---- 06.4 generate
def generate_mutant(kind):
    @torch.no_grad()
    def gen(model, idx, max_new_tokens, temperature=1.0, top_k=None):
        bs = model.config.block_size
        for _ in range(max_new_tokens):
            ctx = idx if kind == "no crop" else (idx[:, :bs] if kind == "crop first" else idx[:, -bs:])
            logits = model(ctx)[0]
            logits = logits[:, 0] if kind == "first position" else logits[:, -1]
            if kind == "times temperature":
                logits = logits * temperature
            elif kind != "temperature on probs":
                logits = logits / temperature
            if top_k is not None and kind != "no top-k":
                v, order = torch.topk(logits, top_k)
                if kind == "sorted index":
                    nxt = torch.multinomial(F.softmax(v, -1), 1)  # forgets to map back through `order`
                    idx = torch.cat([idx, nxt], 1)
                    continue
                logits = logits.masked_fill(logits < v[:, -1:], float("-inf"))
            probs = F.softmax(logits, dim=-1)
            if kind == "temperature on probs":
                probs = probs / temperature
                probs = probs / probs.sum(-1, keepdim=True)
            nxt = probs.argmax(-1, keepdim=True) if kind == "argmax" else torch.multinomial(probs, 1)
            idx = torch.cat([idx, nxt], 1)
        return idx

    return gen


GENERATE_MUTANTS = {
    "no crop": (generate_mutant("no crop"), r"crop the context"),
    "crops the first block_size tokens": (generate_mutant("crop first"), r"FIRST block_size"),
    "first position's logits": (generate_mutant("first position"), r"FIRST position"),
    "multiplies by the temperature": (generate_mutant("times temperature"), r"MULTIPLIED"),
    "temperature on probabilities": (generate_mutant("temperature on probs"), r"no effect"),
    "ignores top_k": (generate_mutant("no top-k"), r"outside the \d most likely"),
    "sorted index not mapped back": (generate_mutant("sorted index"), r"POSITION in the top-k"),
    "always argmax": (generate_mutant("argmax"), r"multinomial"),
}


# ---- 06.5 GPT-2 weights
def load_mutant(kind):
    @torch.no_grad()
    def load(model, sd):
        if kind == "load_state_dict":
            model.load_state_dict({k: v for k, v in sd.items() if not k.endswith((".attn.bias", "masked_bias"))})
            return model
        ours = model.state_dict()
        for name, w in sd.items():
            if kind != "keeps buffers" and name.endswith((".attn.bias", ".attn.masked_bias")):
                continue
            if kind == "transpose when shapes differ":
                w = w.t() if w.dim() == 2 and w.shape != ours[name].shape else w
            elif kind == "no c_proj transpose":
                w = w.t() if name.endswith(("attn.c_attn.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")) else w
            elif name.endswith(CONV1D):
                w = w.t()
            if kind == "skips positions" and "wpe" in name:
                continue
            if kind == "new lm_head Parameter" and name == "lm_head.weight":
                model.lm_head.weight = nn.Parameter(w.clone())
                continue
            ours[name].copy_(w)
        return model

    return load


LOAD_MUTANTS = {
    "no transpose (load_state_dict)": (load_mutant("load_state_dict"), r"Conv1D"),
    "transposes only when the shape does not fit": (load_mutant("transpose when shapes differ"), r"not transposed"),
    "forgets the attention c_proj": (load_mutant("no c_proj transpose"), r"attn\.c_proj\.weight is not transposed"),
    "keeps the mask buffers": (load_mutant("keeps buffers"), r"attn\.bias"),
    "skips the position table": (load_mutant("skips positions"), r"wpe\.weight was not loaded"),
    "replaces lm_head's Parameter": (load_mutant("new lm_head Parameter"), r"no longer tied"),
}


# ---- 06.6 KV cache
def cache_mutant(kind):
    @torch.no_grad()
    def gen(model, idx, max_new_tokens):
        bs = model.config.block_size
        cache = []
        for _ in range(max_new_tokens):
            if kind == "recompute":
                logits, _ = forward_cached(model, idx[:, -bs:], [])
            else:
                S = cache[0][0].size(2) if cache else 0
                if not cache:
                    logits, cache = forward_cached(model, idx[:, -bs:], [])
                elif kind == "no offset":
                    logits, cache = _no_offset(model, idx[:, -1:], cache)
                elif kind == "offset off by one" and S + 2 <= bs:
                    logits, cache = _shifted(model, idx[:, -1:], cache, 1)
                elif kind == "cache never grows":
                    logits, _ = forward_cached(model, idx[:, -1:], cache)
                elif S + 1 <= bs:
                    logits, cache = forward_cached(model, idx[:, -1:], cache)
                elif kind == "drop oldest":
                    cache = [(k[:, :, 1:], v[:, :, 1:]) for k, v in cache]
                    logits, cache = forward_cached(model, idx[:, -1:], cache)
                elif kind == "window one short":
                    logits, cache = forward_cached(model, idx[:, -(bs - 1):], [])
                else:
                    logits, cache = forward_cached(model, idx[:, -bs:], [])
            idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
        return idx

    return gen


def _shifted(model, idx, cache, shift):
    wpe = model.transformer.wpe
    saved = wpe.forward
    wpe.forward = lambda pos: saved(pos + shift)
    try:
        return forward_cached(model, idx, cache)
    finally:
        del wpe.forward


def _no_offset(model, idx, cache):
    # the same as forward_cached with every new token at position 0
    wpe = model.transformer.wpe
    saved = wpe.forward
    wpe.forward = lambda pos: saved(pos - pos.min())
    try:
        return forward_cached(model, idx, cache)
    finally:
        del wpe.forward


def _leaky_prompt(model, idx, max_new_tokens):
    """Processes the prompt without a causal mask (so the cached keys of later layers saw the future)."""
    bs = model.config.block_size
    logits, cache = _bidirectional_prefill(model, idx[:, -bs:])
    out = torch.cat([idx, logits.argmax(-1, keepdim=True)], 1)
    for _ in range(max_new_tokens - 1):
        if cache[0][0].size(2) + 1 <= bs:
            logits, cache = forward_cached(model, out[:, -1:], cache)
        else:
            logits, cache = _bidirectional_prefill(model, out[:, -bs:])
        out = torch.cat([out, logits.argmax(-1, keepdim=True)], 1)
    return out


@torch.no_grad()
def _bidirectional_prefill(model, idx):
    B, T = idx.shape
    x = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(T))
    C = x.size(-1)
    cache = []
    for block in model.transformer.h:
        nh = block.attn.n_head
        q, k, v = (z.view(B, T, nh, C // nh).transpose(1, 2) for z in block.attn.c_attn(block.ln_1(x)).split(C, 2))
        cache.append((k, v))
        y = F.scaled_dot_product_attention(q, k, v)  # no mask
        x = x + block.attn.c_proj(y.transpose(1, 2).reshape(B, T, C))
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(model.transformer.ln_f(x[:, -1])), cache


CACHE_MUTANTS = {
    "recomputes everything": (cache_mutant("recompute"), r"recomputes\s+keys and values the cache already holds"),
    "forgets the position offset": (cache_mutant("no offset"), r"position offset"),
    "drops the oldest entries past the block size": (cache_mutant("drop oldest"), r"drop the oldest"),
    "position offset off by one": (cache_mutant("offset off by one"), r"within the block"),
    "cache never grows (keeps only the prompt)": (cache_mutant("cache never grows"), r"within the block"),
    "re-runs a window one token short": (cache_mutant("window one short"), r"past the block size"),
    "prompt without causal mask": (_leaky_prompt, r"causal mask"),
}


def _with(check, *extra):
    def run(answer):
        return check(answer, *extra)

    run.__name__ = check.__name__
    return run


CASES = [
    (_with(check_gpt_attention, Config), MultiHeadAttention, ATTENTION_MUTANTS),
    (_with(check_gpt_block, Config), Block, BLOCK_MUTANTS),
    (_with(check_gpt_lm, Config), GPT, LM_MUTANTS),
    (check_gpt_generate, generate, GENERATE_MUTANTS),
    (_with(check_gpt2_weights, GPT, Config), load_gpt2_weights, LOAD_MUTANTS),
    (_with(check_kv_cache_generation, GPT, Config), generate_cached, CACHE_MUTANTS),
]

test_reference_passes, test_mutant_fails, test_stub_not_done = checker_tests(CASES)


def test_feed_forward_matches_the_library():
    from minigpt.blocks import FeedForward as LibFeedForward

    cfg = Config(n_embd=16, gelu="none")
    ours, lib = FeedForward(cfg).eval(), LibFeedForward(16, 64, "gelu")
    lib.load_state_dict({k: v for k, v in ours.state_dict().items()})
    x = torch.randn(2, 3, 16)
    assert torch.allclose(ours(x), lib(x), atol=1e-6)


def test_stub_class_is_not_done():
    assert check_gpt_lm(_stub_class, Config).status == "not done"
