"""Checkers for notebook 06 (GPT from scratch).

The student's classes are built from the notebook's own ``Config`` dataclass, which the checkers receive
as ``config_class`` and call with keyword arguments only: ``vocab_size``, ``block_size``, ``n_layer``,
``n_head``, ``n_embd``, ``dropout``, ``bias``, ``gelu`` ("tanh" = GPT-2's ``gelu_new``, "none" = exact) and
``eps``. Parameter names follow GPT-2 (``transformer.wte``, ``transformer.h.0.attn.c_attn``, ``lm_head``),
so weights copy one to one into the independent references: ``F.scaled_dot_product_attention``, the
library's :class:`~minigpt.blocks.TransformerBlock` and :class:`~minigpt.model.GPT`, and Hugging Face's
``GPT2LMHeadModel`` built from a tiny random ``GPT2Config`` (no download). Every model is checked in
``eval()`` mode with dropout 0. Shapes: B batch, T time, C n_embd, nh heads, hs head size, V vocab.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._core import ExerciseFailed, checker, expect, forbid

__all__ = [
    "check_gpt_attention",
    "check_gpt_block",
    "check_gpt_lm",
    "check_gpt_generate",
    "check_gpt2_weights",
    "check_kv_cache_generation",
]

_ACTIVATION = {"tanh": "gelu_tanh", "none": "gelu"}
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _close(a, b, tol: float = 1e-4) -> bool:
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and torch.allclose(a.float(), b.float(), atol=tol, rtol=tol))


def _config(config_class, **kw):
    base = dict(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0, bias=True,
                gelu="tanh", eps=1e-5)
    base.update(kw)
    try:
        return config_class(**base)
    except TypeError as e:
        raise ExerciseFailed(
            f"could not build your config with {sorted(base)} ({e}); pass the notebook's Config dataclass"
        ) from None


@torch.no_grad()
def _randomize(module: nn.Module, g: torch.Generator, scale: float = 0.5) -> None:
    """Large random weights (biases and norm gains too), so that every mistake changes the output."""
    for name, p in module.named_parameters():
        if name.endswith("weight") and p.dim() == 1:  # a norm's gain: keep it near 1
            p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
        elif p.dim() == 2 and ("wte" in name or "wpe" in name):
            p.copy_(torch.randn(p.shape, generator=g))
        else:
            p.copy_(scale * torch.randn(p.shape, generator=g))


def _lib_config(cfg):
    from ..model import GPTConfig

    return GPTConfig(
        vocab_size=cfg.vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
        n_embd=cfg.n_embd, dropout=0.0, bias=cfg.bias, activation=_ACTIVATION[cfg.gelu], position="learned",
        layer_norm_eps=cfg.eps, tie_weights=True,
    )


def _output(out, what: str) -> torch.Tensor:
    expect(isinstance(out, torch.Tensor), f"{what} should return one tensor, got {type(out).__name__}")
    return out


# ---------------------------------------------------------------- 06.1 attention


def _attn_variant(x, c_attn, c_proj, nh, *, causal=True, scale="hs", proj=True, merge="ok", order="qkv",
                  split="ok", softmax_dim=-1, fill=float("-inf")):
    """Causal self-attention written out, with switches for the usual mistakes."""
    B, T, C = x.shape
    hs = C // nh
    parts = dict(zip("qkv", c_attn(x).split(C, dim=2)))  # [q | k | v] along channels
    q, k, v = (parts[order[0]], parts[order[1]], parts[order[2]])

    def heads(t):
        if split == "no_transpose":
            return t.reshape(B, nh, T, hs)  # (B, nh, T, hs) from the flat memory: mixes tokens
        return t.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)

    q, k, v = heads(q), heads(k), heads(v)
    denom = {"hs": math.sqrt(hs), "C": math.sqrt(C), "none": 1.0}[scale]
    att = (q @ k.transpose(-2, -1)) / denom  # (B, nh, T, T)
    if causal:
        keep = torch.ones(T, T, dtype=torch.bool).tril()
        att = att.masked_fill(~keep, fill)
    att = F.softmax(att, dim=softmax_dim)
    y = att @ v  # (B, nh, T, hs)
    if merge == "no_transpose":
        y = y.reshape(B, T, C)
    else:
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
    return c_proj(y) if proj else y


_ATTN_MISTAKES = [
    (dict(causal=False), "there is no causal mask: every position also attends to later positions. Mask the "
                         "scores above the diagonal with -inf before the softmax"),
    (dict(fill=0.0), "you set the masked scores to 0; a score of 0 still gets weight exp(0) after the softmax. "
                     "Fill them with float('-inf')"),
    (dict(scale="C"), "you divided by sqrt(C) = sqrt(n_embd); the scale is sqrt(head size) = sqrt(C // n_head)"),
    (dict(scale="none"), "the scores are not scaled: divide q @ k^T by sqrt(head size)"),
    (dict(proj=False), "the heads are merged but the output projection c_proj is missing"),
    (dict(merge="no_transpose"), "you merged the heads with a reshape of (B, nh, T, hs) straight to (B, T, C), "
                                 "which mixes tokens: transpose(1, 2) back to (B, T, nh, hs) first, then view"),
    (dict(split="no_transpose"), "you split the heads by reshaping (B, T, C) straight to (B, nh, T, hs), which "
                                 "mixes tokens: view(B, T, nh, hs) and then transpose(1, 2)"),
    (dict(softmax_dim=-2), "the softmax runs over the queries (dim=-2); each query's weights over the KEYS must "
                           "sum to 1: softmax(dim=-1)"),
    (dict(order="kqv"), "q and k are swapped: c_attn's output is [q | k | v] along the channels, in that order"),
    (dict(order="qvk"), "k and v are swapped: c_attn's output is [q | k | v] along the channels, in that order"),
]


@checker("06.1 causal self-attention")
def check_gpt_attention(attn_class, config_class) -> None:
    """attn_class(config) with ``c_attn`` Linear(C, 3C) and ``c_proj`` Linear(C, C); forward(x (B, T, C)) -> (B, T, C).

    Compared with ``F.scaled_dot_product_attention(is_causal=True)`` and the library's MultiHeadAttention on
    the same weights; the student writes the weights out (``scaled_dot_product_attention`` is not allowed).
    """
    from ..attention import MultiHeadAttention as LibAttention

    g = torch.Generator().manual_seed(61)
    for B, T, C, nh, bias in [(2, 5, 16, 4, True), (1, 7, 24, 3, False), (3, 6, 12, 1, True), (2, 1, 8, 2, True)]:
        attn = attn_class(_config(config_class, n_embd=C, n_head=nh, bias=bias, block_size=8))
        expect(isinstance(getattr(attn, "c_attn", None), nn.Linear) and attn.c_attn.out_features == 3 * C,
               "keep the scaffold's fused projection self.c_attn = nn.Linear(C, 3 * C): ONE matmul gives q, k, v")
        expect(isinstance(getattr(attn, "c_proj", None), nn.Linear), "keep the scaffold's output layer self.c_proj")
        attn.eval()
        _randomize(attn, g)
        x = torch.randn(B, T, C, generator=g)
        with torch.no_grad(), forbid({
            "torch.nn.functional.scaled_dot_product_attention":
                "the task asks you to write the attention weights yourself (q @ k^T / sqrt(hs), mask, softmax, @ v)",
        }):
            got = _output(attn(x.clone()), "forward")
        with torch.no_grad():
            qkv = attn.c_attn(x).split(C, dim=2)
            q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in qkv)  # (B, nh, T, hs)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
            want = attn.c_proj(y.transpose(1, 2).reshape(B, T, C))
            lib = LibAttention(C, nh, bias=bias).eval()
            lib.load_state_dict({k: v for k, v in attn.state_dict().items() if k.startswith(("c_attn", "c_proj"))})
            assert _close(lib(x, causal=True)[0], want)  # two references agree
            expect(got.shape == want.shape, f"x of shape (B, T, C) = {(B, T, C)} should give (B, T, C), got "
                                            f"{tuple(got.shape)}")
            if _close(got, want):
                continue
            expect(not bool(torch.isnan(got).any()),
                   "your output contains NaN: some query has every key masked, so its softmax is 0/0. A position "
                   "must be allowed to see ITSELF: keep the diagonal (torch.tril, not tril(diagonal=-1) or triu)")
            for kw, message in _ATTN_MISTAKES:
                if (kw.get("scale") == "C" and nh == 1) or (kw.get("order") and T == 1):
                    continue  # these mistakes are invisible for one head / one token
                if _close(got, _attn_variant(x, attn.c_attn, attn.c_proj, nh, **kw)):
                    raise ExerciseFailed(f"(B, T, C, n_head) = {(B, T, C, nh)}: {message}")
            x2 = x.clone()
            x2[:, -1] += 1.0
            expect(_close(attn(x2)[:, :-1], got[:, :-1]),
                   "changing the LAST token changed the outputs at earlier positions: a position may only attend "
                   "to itself and earlier positions (causal mask: keep torch.ones(T, T).tril())")
            raise ExerciseFailed(
                f"(B, T, C, n_head) = {(B, T, C, nh)}: the output differs from F.scaled_dot_product_attention(q, k, "
                f"v, is_causal=True) on the same weights (max difference {(got - want).abs().max():.3g}). Steps: "
                "q, k, v = c_attn(x).split(C, dim=2); view(B, T, nh, hs).transpose(1, 2); scores / sqrt(hs); "
                "causal mask; softmax(dim=-1); @ v; transpose back and view(B, T, C); c_proj"
            )


# ---------------------------------------------------------------- 06.2 block


def _block_variants(lib, x):
    a = lambda h: lib.attn(h, causal=True)[0]  # noqa: E731
    ln_1, ln_2, mlp = lib.ln_1, lib.ln_2, lib.mlp
    post = ln_1(x + a(x))
    yield ln_2(post + mlp(post)), ("this is the post-LN block of 2017 (normalise after adding the residual); "
                                  "GPT's pre-LN block normalises the branch input: x = x + attn(ln_1(x))")
    h = a(ln_1(x))
    yield h + mlp(ln_2(h)), "the attention sub-layer has no residual: x = x + attn(ln_1(x)), not x = attn(...)"
    h = x + a(ln_1(x))
    yield mlp(ln_2(h)), "the feed-forward sub-layer has no residual: x = x + mlp(ln_2(x))"
    h = x + a(ln_1(x))
    yield h + mlp(ln_1(h)), "you used ln_1 before the feed-forward too; each sub-layer has its own norm (ln_2)"
    n = ln_1(x)
    h = n + a(n)
    n2 = ln_2(h)
    yield n2 + mlp(n2), ("you normalised the residual stream itself (x = ln(x)); pre-LN normalises only the "
                         "branch input and adds the branch to the UN-normalised x")
    h = x + mlp(ln_1(x))
    yield h + a(ln_2(h)), "the feed-forward runs before the attention; the order is attention, then feed-forward"
    yield x + a(ln_1(x)) + mlp(ln_2(x)), ("both branches read the same x (parallel block); the feed-forward must "
                                         "read the output of the attention step: x = x + attn(ln_1(x)) first")


@checker("06.2 pre-LN block")
def check_gpt_block(block_class, config_class) -> None:
    """block_class(config) with ln_1, attn, ln_2, mlp; forward(x (B, T, C)) -> (B, T, C), pre-LN with residuals.

    The reference is the library's ``TransformerBlock(causal=True)`` holding the same weights.
    """
    from ..blocks import TransformerBlock

    g = torch.Generator().manual_seed(62)
    for B, T, C, nh, bias, gelu in [(2, 6, 16, 2, True, "tanh"), (1, 5, 24, 3, False, "none")]:
        cfg = _config(config_class, n_embd=C, n_head=nh, bias=bias, gelu=gelu, block_size=8)
        block = block_class(cfg).eval()
        _randomize(block, g)
        lib = TransformerBlock(C, nh, activation=_ACTIVATION[gelu], bias=bias, causal=True, eps=cfg.eps).eval()
        ours = block.state_dict()
        missing = sorted(set(lib.state_dict()) - set(ours))
        expect(not missing, f"your block has no parameters named {missing[:4]}: keep the scaffold's ln_1, attn, "
                            "ln_2 and mlp")
        lib.load_state_dict({k: ours[k] for k in lib.state_dict()})
        x = torch.randn(B, T, C, generator=g)
        with torch.no_grad():
            got = _output(block(x.clone()), "the block's forward")
            want = lib(x)[0]
            expect(got.shape == want.shape, f"the block must keep the shape (B, T, C) = {(B, T, C)}, got "
                                            f"{tuple(got.shape)}")
            if _close(got, want):
                continue
            for variant, message in _block_variants(lib, x):
                expect(not _close(got, variant), message)
            raise ExerciseFailed(
                "the output differs from the library's pre-LN TransformerBlock with the same weights (max difference "
                f"{(got - want).abs().max():.3g}); the block is x = x + self.attn(self.ln_1(x)); "
                "x = x + self.mlp(self.ln_2(x))"
            )


# ---------------------------------------------------------------- 06.3 language model


def _lm_variant(lib, idx, *, pos="ok", ln_f=True):
    t = lib.transformer
    B, T = idx.shape
    x = t.wte(idx)
    if pos == "ok":
        x = x + t.wpe.weight[:T]
    elif pos == "tokens":
        x = x + t.wpe.weight[idx]
    for block in t.h:
        x = block(x)[0]
    if ln_f:
        x = t.ln_f(x)
    return lib.lm_head(x)


@checker("06.3 the language model, weights tied")
def check_gpt_lm(model_class, config_class) -> None:
    """model_class(config) -> GPT with ``transformer.{wte, wpe, h, ln_f}`` and ``lm_head`` tied to ``wte``;
    forward(idx (B, T), targets=None) -> (logits (B, T, V), loss or None).

    The reference is the library's :class:`~minigpt.model.GPT` holding the same weights.
    """
    from ..model import GPT as LibGPT

    g = torch.Generator().manual_seed(63)
    for V, bs, n_layer, nh, C, bias, T in [(11, 16, 2, 2, 16, True, 9), (37, 8, 1, 4, 16, False, 8)]:
        cfg = _config(config_class, vocab_size=V, block_size=bs, n_layer=n_layer, n_head=nh, n_embd=C, bias=bias)
        model = model_class(cfg).eval()
        wte = model.transformer["wte"] if "wte" in getattr(model, "transformer", {}) else None
        expect(isinstance(wte, nn.Embedding) and isinstance(getattr(model, "lm_head", None), nn.Linear),
               "keep the scaffold's layout: self.transformer.wte (nn.Embedding) and self.lm_head (nn.Linear)")
        if model.lm_head.weight is not wte.weight:
            expect(not torch.equal(model.lm_head.weight, wte.weight),
                   "lm_head holds a COPY of the embedding: the values match now, but they are two Parameters "
                   "that training will pull apart. Share the Parameter itself: "
                   "self.lm_head.weight = self.transformer.wte.weight")
            raise ExerciseFailed("lm_head is not tied to the token embedding: add "
                                 "self.lm_head.weight = self.transformer.wte.weight (saves V * C parameters)")
        lib = LibGPT(_lib_config(cfg)).eval()
        n_ours = sum(p.numel() for p in model.parameters())
        expect(n_ours == lib.num_params(),
               f"your model has {n_ours:,} parameters, the GPT of this config has {lib.num_params():,}; keep the "
               "scaffold's modules")
        _randomize(model, g)
        ours = model.state_dict()
        expect(set(ours) >= set(lib.state_dict()),
               f"parameter names differ from GPT-2's: missing {sorted(set(lib.state_dict()) - set(ours))[:4]}")
        lib.load_state_dict({k: ours[k] for k in lib.state_dict()})
        idx = torch.randint(0, V, (2, T), generator=g)
        targets = torch.randint(0, V, (2, T), generator=g)
        with torch.no_grad():
            out = model(idx.clone())
            expect(isinstance(out, tuple) and len(out) == 2,
                   f"forward must return the pair (logits, loss), got {type(out).__name__}")
            logits, loss = out
            expect(loss is None, "without targets the loss must be None")
            logits = _output(logits, "forward's logits")
            want = lib(idx)[0]
            expect(logits.shape == want.shape, f"logits should be (B, T, V) = {tuple(want.shape)}, got "
                                               f"{tuple(logits.shape)}")
            if not _close(logits, want):
                expect(not _close(logits, F.softmax(want, dim=-1)),
                       "you returned probabilities; forward returns the raw logits (lm_head's output), and "
                       "F.cross_entropy applies the log-softmax itself")
                expect(not _close(logits, _lm_variant(lib, idx, pos="none")),
                       "the position embedding is missing: x = wte(idx) + wpe(torch.arange(T))")
                expect(not _close(logits, _lm_variant(lib, idx, pos="tokens")),
                       "you looked the positions up with the token ids, wpe(idx); positions are 0 .. T-1: "
                       "wpe(torch.arange(T))")
                expect(not _close(logits, _lm_variant(lib, idx, ln_f=False)),
                       "the final LayerNorm ln_f is missing before lm_head")
                idx2 = idx.clone()
                idx2[:, -1] = (idx2[:, -1] + 1) % V
                expect(_close(model(idx2)[0][:, :-1], logits[:, :-1]),
                       "changing the LAST token changed the logits of earlier positions: a position must never see "
                       "the future")
                raise ExerciseFailed(
                    "the logits differ from the library GPT with the same weights (max difference "
                    f"{(logits - want).abs().max():.3g}): embeddings + positions, every block, ln_f, lm_head"
                )
            out = model(idx.clone(), targets.clone())
            expect(isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], torch.Tensor),
                   "with targets, forward must return (logits, loss) with the loss a tensor")
            loss = out[1]
            want_loss = F.cross_entropy(want.reshape(-1, V), targets.reshape(-1))
            expect(loss.dim() == 0, f"the loss must be one number (a 0-d tensor), got shape {tuple(loss.shape)}")
            expect(not _close(loss, F.cross_entropy(want.reshape(-1, V), targets.reshape(-1), reduction="sum")),
                   "the loss is the SUM over tokens; use the mean (F.cross_entropy's default), which does not "
                   "grow with B * T")
            expect(not _close(loss, F.cross_entropy(want[:, :-1].reshape(-1, V), targets[:, 1:].reshape(-1))),
                   "you shifted the targets again; get_batch already returns y shifted by one, so logits[:, t] "
                   "is compared with targets[:, t]")
            expect(not _close(loss, F.cross_entropy(F.softmax(want, -1).reshape(-1, V), targets.reshape(-1))),
                   "you applied softmax before F.cross_entropy; it takes the raw logits (it applies log-softmax "
                   "itself, in a numerically stable way)")
            expect(not _close(loss, F.cross_entropy(want[:, -1], targets[:, -1])),
                   "the loss uses only the last position; every position predicts its next token, so average "
                   "over all B * T positions")
            expect(_close(loss, want_loss),
                   f"loss {float(loss):.4f} should be F.cross_entropy(logits.view(B * T, V), targets.view(B * T)) "
                   f"= {float(want_loss):.4f}")


# ---------------------------------------------------------------- 06.4 generate


class _NextOfLast(nn.Module):
    """A fake model whose next-token logits at position t depend only on token t; refuses T > block_size."""

    def __init__(self, table: torch.Tensor, block_size: int) -> None:
        super().__init__()
        self.table = table  # (V, V): row a = logits after token a
        self.config = type("Config", (), {"block_size": block_size})()

    def forward(self, idx, targets=None):
        if idx.size(1) > self.config.block_size:
            raise ExerciseFailed(
                f"your generate fed the model {idx.size(1)} tokens, more than block_size={self.config.block_size}: "
                "crop the context to the LAST block_size tokens, idx[:, -block_size:]"
            )
        return self.table[idx], None  # (B, T, V)


class _Fixed(nn.Module):
    """A fake model with the same next-token logits z after any context."""

    def __init__(self, z: torch.Tensor, block_size: int = 8) -> None:
        super().__init__()
        self.z = z
        self.config = type("Config", (), {"block_size": block_size})()

    def forward(self, idx, targets=None):
        B, T = idx.shape
        return self.z.expand(B, T, -1).clone(), None


def _filter_top_k(z: torch.Tensor, k) -> torch.Tensor:
    if k is None:
        return z
    kth = torch.topk(z, k).values[-1]
    return z.masked_fill(z < kth, float("-inf"))


@checker("06.4 generate")
def check_gpt_generate(generate_fn) -> None:
    """generate_fn(model, idx (B, T), max_new_tokens, temperature=1.0, top_k=None) -> (B, T + max_new_tokens).

    ``model(idx)`` returns ``(logits, loss)`` and ``model.config.block_size`` is its context. Sampling is
    checked by frequencies over 20,000 rows (any correct way to sample passes), the loop on a model that is
    certain of the next token.
    """
    g = torch.Generator().manual_seed(64)
    V, bs = 7, 5
    table = torch.randn(V, V, generator=g)
    table[torch.arange(V), torch.randperm(V, generator=g)] += 60.0  # one clear next token after each token
    model = _NextOfLast(table, bs)
    idx = torch.randint(0, V, (2, 3), generator=g)
    with torch.no_grad():
        out = generate_fn(model, idx.clone(), 9)
    expect(isinstance(out, torch.Tensor), f"return the tensor of token ids, got {type(out).__name__}")
    expect(out.shape == (2, 12), f"return the prompt followed by the new tokens: (B, T + max_new_tokens) = (2, 12), "
                                 f"got {tuple(out.shape)}")
    expect(torch.equal(out[:, :3], idx), "the output must start with the prompt, unchanged")
    want, first, head = idx.clone(), idx.clone(), idx.clone()
    for _ in range(9):
        want = torch.cat([want, table[want[:, -1]].argmax(-1, keepdim=True)], dim=1)
        first = torch.cat([first, table[first[:, -bs:][:, 0]].argmax(-1, keepdim=True)], dim=1)
        head = torch.cat([head, table[head[:, :bs][:, -1]].argmax(-1, keepdim=True)], dim=1)
    if not torch.equal(out, want):
        expect(not torch.equal(out, head), f"you kept the FIRST block_size={bs} tokens of the context; the model "
                                           "must see the most recent ones: idx[:, -block_size:]")
        expect(not torch.equal(out, first), "you sampled from the logits of the FIRST position of the window; the "
                                            "next token is predicted by the LAST one: logits[:, -1, :]")
        raise ExerciseFailed("on a model that is certain of the next token after each token, your tokens differ: "
                             "every step must sample from the LAST position's logits, append the new token and feed "
                             "the longer context back in")
    z = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0, -3.0])  # not sorted, so a sorted position is not a token id
    N = 20_000
    for temperature, top_k in [(1.0, None), (0.5, None), (2.0, 3), (1.0, 2)]:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(640)
            out = generate_fn(_Fixed(z), torch.zeros(N, 1, dtype=torch.long), 1, temperature=temperature, top_k=top_k)
        expect(isinstance(out, torch.Tensor) and out.shape == (N, 2), f"expected a ({N}, 2) tensor for {N} prompts "
                                                                      "of one token and one new token")
        freq = torch.bincount(out[:, 1], minlength=len(z)).float() / N
        p = lambda zz: F.softmax(zz, dim=-1)  # noqa: E731
        want = p(_filter_top_k(z, top_k) / temperature)
        if (freq - want).abs().max() < 0.02:
            continue
        where = f"temperature={temperature}, top_k={top_k}"
        expect(float(freq.max()) < 0.999, f"({where}) you always pick the most likely token; sample from the "
                                          "probabilities with torch.multinomial(probs, 1)")
        if top_k is not None:
            sorted_pos = torch.zeros(len(z))
            sorted_pos[:top_k] = p(torch.topk(z, top_k).values / temperature)
            expect((freq - sorted_pos).abs().max() > 0.02,
                   f"({where}) you sampled a POSITION in the top-k list (0 .. k-1) and used it as the token id: map "
                   "it back through the indices topk returns (or mask the logits below the k-th largest instead)")
            outside = float(freq[want == 0].sum())
            expect(outside == 0.0, f"({where}) {outside:.1%} of the samples are tokens outside the {top_k} most "
                                   "likely: set the other logits to -inf before the softmax")
        if temperature != 1.0:
            expect((freq - p(_filter_top_k(z, top_k) * temperature)).abs().max() > 0.02,
                   f"({where}) you MULTIPLIED the logits by the temperature; divide them: logits / temperature")
            expect((freq - p(_filter_top_k(z, top_k))).abs().max() > 0.02,
                   f"({where}) the temperature has no effect; divide the LOGITS by it before the softmax "
                   "(dividing probabilities changes nothing once they are renormalised)")
        raise ExerciseFailed(f"({where}) sampled frequencies {[round(float(f), 3) for f in freq]} differ from "
                             f"softmax(logits / temperature) = {[round(float(f), 3) for f in want]}")


# ---------------------------------------------------------------- 06.5 GPT-2 weights


def _tiny_hf(g: torch.Generator, V=29, n_positions=12, n_layer=2, n_head=2, n_embd=16):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=n_positions, n_layer=n_layer, n_head=n_head,
                                    n_embd=n_embd, bos_token_id=None, eos_token_id=None,
                                    attn_implementation="eager"))
    hf.eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() == 1 and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return hf


@checker("06.5 GPT-2 weights in your GPT")
def check_gpt2_weights(load_fn, model_class, config_class) -> None:
    """load_fn(model, hf_state_dict) copies a ``GPT2LMHeadModel.state_dict()`` into ``model`` (your GPT).

    The model is built as ``model_class(config_class(..., bias=True, gelu="tanh", eps=1e-5))``; the
    reference is a tiny random ``GPT2LMHeadModel``: equal logits (atol 1e-5) and equal greedy tokens.
    """
    g = torch.Generator().manual_seed(65)
    for with_buffers in (False, True):
        hf = _tiny_hf(g)
        c = hf.config
        cfg = _config(config_class, vocab_size=c.vocab_size, block_size=c.n_positions, n_layer=c.n_layer,
                      n_head=c.n_head, n_embd=c.n_embd, bias=True, gelu="tanh", eps=c.layer_norm_epsilon)
        model = model_class(cfg).eval()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        sd = dict(hf.state_dict())
        if with_buffers:  # what older transformers versions put in the state dict: masks, not weights
            n = c.n_positions
            for i in range(c.n_layer):
                sd[f"transformer.h.{i}.attn.bias"] = torch.ones(n, n, dtype=torch.bool).tril().view(1, 1, n, n)
                sd[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
        try:
            with torch.no_grad():
                out = load_fn(model, sd)
        except (KeyError, RuntimeError, ValueError, AssertionError, IndexError) as e:
            if isinstance(e, ExerciseFailed | NotImplementedError):
                raise
            text = f"{type(e).__name__}: {e}"
            if "attn.bias" in text or "masked_bias" in text:
                raise ExerciseFailed(
                    "your loader stopped at a `...attn.bias` / `...attn.masked_bias` entry: older transformers "
                    f"versions store each layer's causal mask in the state dict. They are not weights; skip them "
                    f"({text[:200]})") from None
            if "size" in text or "shape" in text:
                raise ExerciseFailed(
                    "a tensor did not fit: Hugging Face's GPT-2 keeps attn.c_attn, attn.c_proj, mlp.c_fc and "
                    "mlp.c_proj as Conv1D with weights stored (in, out), the transpose of nn.Linear's (out, in); "
                    f"transpose exactly those four ({text[:200]})") from None
            raise
        expect(out is None or out is model, "return the model you loaded into (or nothing)")
        expect(model.lm_head.weight is model.transformer.wte.weight,
               "after loading, lm_head is no longer tied to transformer.wte: you replaced a Parameter object. Copy "
               "values into the existing tensors (param.copy_(w) under torch.no_grad())")
        theirs = hf.state_dict()
        for name, p in model.state_dict().items():
            w = theirs[name].t() if name.endswith(_CONV1D) else theirs[name]
            if torch.equal(p, w):
                continue
            expect(not (p.shape == w.shape and torch.equal(p, w.t())),
                   f"{name} is not transposed: Conv1D stores (in, out). It is square here, so nothing complained; "
                   "transpose all four Conv1D weights (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)")
            expect(not torch.equal(p, before[name]), f"{name} was not loaded (it still holds its initial values)")
            expect(not name.endswith(".weight") or not p.dim() == 2 or name.endswith(_CONV1D) or
                   not torch.equal(p, w.t()), f"{name} was transposed but is not a Conv1D weight; leave it as it is")
            raise ExerciseFailed(f"{name} holds values that are not Hugging Face's {name}"
                                 f"{' (transposed)' if name.endswith(_CONV1D) else ''}")
        idx = torch.randint(0, c.vocab_size, (2, 10), generator=g)
        with torch.no_grad():
            ours = model(idx)[0]
            ref = hf(idx).logits
        expect(_close(ours, ref, 1e-5), f"the weights match but the logits differ from GPT2LMHeadModel by "
                                        f"{(ours - ref).abs().max():.3g}: is your GELU the tanh form (gelu='tanh')?")


# ---------------------------------------------------------------- 06.6 KV cache


@torch.no_grad()
def _greedy_uncached(model, idx, n):
    bs = model.config.block_size
    gaps = []
    for _ in range(n):
        logits = model(idx[:, -bs:])[0][:, -1]  # (B, V)
        top2 = logits.topk(2, dim=-1).values
        gaps.append(float((top2[:, 0] - top2[:, 1]).min()))
        idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
    return idx, min(gaps)


@torch.no_grad()
def _step(model, idx, cache, offset):
    """One cached forward over the new tokens idx at positions offset...; returns last logits, new cache."""
    t = model.transformer
    B, T = idx.shape
    x = t.wte(idx) + t.wpe.weight[offset : offset + T]  # (B, T, C)
    C = x.size(-1)
    new = []
    for i, block in enumerate(t.h):
        nh = block.attn.n_head
        hs = C // nh
        q, k, v = (z.view(B, T, nh, hs).transpose(1, 2) for z in block.attn.c_attn(block.ln_1(x)).split(C, dim=2))
        if cache:
            k, v = torch.cat([cache[i][0], k], dim=2), torch.cat([cache[i][1], v], dim=2)  # (B, nh, S, hs)
        new.append((k, v))
        S = k.size(2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)  # (B, nh, T, S)
        att = att.masked_fill(~torch.ones(T, S, dtype=torch.bool).tril(S - T), float("-inf")).softmax(-1)
        x = x + block.attn.c_proj((att @ v).transpose(1, 2).reshape(B, T, C))
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(t.ln_f(x[:, -1])), new


@torch.no_grad()
def _greedy_cached_mistake(model, idx, n, mistake):
    """What two common wrong caches produce: "no_offset" (every new token at position 0) or "slide" (past the
    block size, drop the oldest cached key/value and keep going)."""
    bs = model.config.block_size
    logits, cache = _step(model, idx[:, -bs:], [], 0)
    for s in range(n):
        nxt = logits.argmax(-1, keepdim=True)
        idx = torch.cat([idx, nxt], dim=1)
        if s == n - 1:
            break
        S = cache[0][0].size(2)
        if mistake == "slide" and S >= bs:
            cache = [(k[:, :, 1:], v[:, :, 1:]) for k, v in cache]
            S -= 1
        logits, cache = _step(model, nxt, cache, 0 if mistake == "no_offset" else S)
    return idx


@checker("06.6 KV cache")
def check_kv_cache_generation(generate_cached, model_class, config_class) -> None:
    """generate_cached(model, idx (B, T), max_new_tokens) -> (B, T + max_new_tokens), greedy, with a KV cache.

    ``model = model_class(config)`` is your GPT (eval mode, dropout 0, random weights). The tokens must equal
    uncached greedy decoding that crops the context to ``block_size``, on several lengths including past the
    block size. The checker watches the sequence length T that the model's token embedding receives per call:
    while the sequence fits in the block, every call after the first must feed only the new token (T = 1).
    """
    bs = 8
    cfg = _config(config_class, vocab_size=23, block_size=bs, n_layer=2, n_head=2, n_embd=16, bias=True, gelu="tanh")
    for seed in range(66, 126):
        # random weights whose greedy choices are never near a tie, and on which both common wrong caches
        # (no position offset, dropping the oldest entries) change the tokens, so they cannot pass by luck
        g = torch.Generator().manual_seed(seed)
        model = model_class(cfg).eval()
        _randomize(model, g, scale=1.0)
        prompts = [torch.randint(0, cfg.vocab_size, (2, 3), generator=g),
                   torch.randint(0, cfg.vocab_size, (1, bs), generator=g),
                   torch.randint(0, cfg.vocab_size, (8, 5), generator=g)]
        if min(_greedy_uncached(model, p, 16)[1] for p in prompts) < 1e-3:
            continue
        want = _greedy_uncached(model, prompts[0], 16)[0]
        if (not torch.equal(_greedy_cached_mistake(model, prompts[0], 16, "no_offset")[:, :bs], want[:, :bs])
                and not torch.equal(_greedy_cached_mistake(model, prompts[0], 16, "slide"), want)):
            break
    # the invariant every cache relies on: a later token never changes the logits of earlier positions
    with torch.no_grad():
        a = torch.randint(0, cfg.vocab_size, (2, bs), generator=g)
        b = a.clone()
        b[:, -1] = (b[:, -1] + 1) % cfg.vocab_size
        expect(_close(model(a)[0][:, :-1], model(b)[0][:, :-1]),
               "the GPT class you passed is not causal: changing the last token changed earlier logits, and no cache "
               "can be exact for such a model. Pass the notebook's GPT (section 5)")

    seen: list[int] = []
    hooks = [model.transformer.wte.register_forward_hook(lambda m, inp, out: seen.append(int(inp[0].shape[-1]))),
             model.transformer.h[0].attn.c_attn.register_forward_hook(lambda m, inp, out: seen.append(
                 -int(inp[0].shape[-2])))]
    try:
        for prompt, lengths in [(prompts[0], [1, 4, 6]), (prompts[2], [4]), (prompts[0], [9, 16]), (prompts[1], [3, 7]),
                                (prompts[2], [12])]:
            for n in lengths:
                T0 = prompt.size(1)
                want = _greedy_uncached(model, prompt, n)[0]
                seen.clear()
                try:
                    with torch.no_grad():
                        got = generate_cached(model, prompt.clone(), n)
                except (ExerciseFailed, NotImplementedError):
                    raise
                except (IndexError, RuntimeError) as e:
                    if T0 + n - 1 > bs:
                        raise ExerciseFailed(
                            f"prompt of {T0} tokens, {n} new tokens: your code crashed once the sequence grew past "
                            f"block_size={bs} ({type(e).__name__}: {str(e)[:160]}). Past the block size there are no "
                            "more positions: re-run the model on the last block_size tokens") from None
                    raise
                expect(isinstance(got, torch.Tensor) and got.shape == want.shape,
                       f"return the prompt followed by the new tokens, shape {tuple(want.shape)}, got "
                       f"{tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}")
                where = f"prompt of {T0} tokens, {n} new tokens, block_size={bs}"
                if not torch.equal(got, want):
                    s = int((got != want).any(0).nonzero()[0])  # first position that differs
                    context = s  # tokens before it: the context the model predicted it from
                    expect(not torch.equal(got, _greedy_cached_mistake(model, prompt, n, "no_offset")),
                           f"({where}) the cached tokens differ from uncached ones: every new token went in at "
                           "position 0. You forgot the position offset: the new token sits at position = number "
                           "of cached positions, wpe(torch.arange(past, past + T))")
                    expect(not torch.equal(got, _greedy_cached_mistake(model, prompt, n, "slide")),
                           f"({where}) past block_size the tokens differ from uncached generation: you drop the "
                           "oldest cached keys/values and keep going. Those keys were computed at other positions "
                           "and from a context that included the dropped token, so they are not what a fresh run "
                           "on the cropped window computes. Once the window is full, re-run the model on the last "
                           "block_size tokens")
                    if context <= bs:
                        raise ExerciseFailed(
                            f"({where}) token {s} (predicted from {context} tokens, within the block) differs from "
                            "uncached greedy decoding. Check: the new token's position is exactly the number of "
                            "cached positions; each layer appends the new keys/values to its OWN cache; the new "
                            "query attends to all cached positions; the prompt pass needs the causal mask")
                    raise ExerciseFailed(
                        f"({where}) the tokens agree up to block_size but token {s} (context of {context} tokens, "
                        f"more than block_size={bs}) differs: past the block size your cache is not equivalent to "
                        "cropping the context. Once the window is full, re-run the model on the last block_size "
                        "tokens")
                fed = [t for t in seen if t > 0] or [-t for t in seen if t < 0]
                expect(fed, "could not see your model being called: call its modules (model.transformer.wte(idx), "
                            "block.attn.c_attn(...)) rather than their .weight tensors")
                if T0 + n - 1 <= bs:  # everything fits: one prompt pass, then one token per step
                    expect(sum(t > 1 for t in fed) <= 1 and sum(fed) <= T0 + n,
                           f"({where}) the model received T = {fed} tokens per call: your generation recomputes "
                           "keys and values the cache already holds (the whole sequence at every step, or the prompt "
                           "twice). With a cache, run the prompt once, then feed only the new token (T = 1) and "
                           "attend over the cached keys/values")
    finally:
        for h in hooks:
            h.remove()
