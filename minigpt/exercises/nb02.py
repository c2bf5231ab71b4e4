"""Checkers for notebook 02 (multi-head attention).

References are independent of the code under test: explicit per-head loops, ``torch.nn.MultiheadAttention``,
and the parameter / cache-size formulas written out term by term.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import torch
import torch.nn as nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from ._core import ExerciseFailed, checker, expect

__all__ = [
    "check_split_heads",
    "check_merge_heads",
    "check_attention_params",
    "check_gqa_cache_bytes",
    "check_multi_head_attention",
    "check_train_with_heads",
]


def _close(a, b, tol: float = 1e-5) -> bool:
    return isinstance(a, torch.Tensor) and a.shape == b.shape and torch.allclose(a, b, atol=tol, rtol=tol)


def _ref_split(x: torch.Tensor, n_head: int) -> torch.Tensor:
    B, T, C = x.shape
    hs = C // n_head
    return torch.stack([x[:, :, h * hs : (h + 1) * hs] for h in range(n_head)], dim=1)  # (B, nh, T, hs)


@checker("02.1 split heads")
def check_split_heads(fn) -> None:
    """fn(x (B, T, C), n_head) -> (B, nh, T, hs); head h owns channels [h*hs, (h+1)*hs)."""
    for B, T, C, nh in [(2, 5, 12, 3), (1, 6, 8, 2), (3, 7, 16, 4)]:  # T != hs
        x = torch.randn(B, T, C)
        got = fn(x.clone(), nh)
        want = _ref_split(x, nh)
        expect(isinstance(got, torch.Tensor), f"return a tensor, got {type(got).__name__}")
        hs = C // nh
        expect(got.shape != (B, T, nh, hs), f"your result is (B, T, nh, hs) = {(B, T, nh, hs)}: the view is right "
               "but the head axis must come next to the batch axis, (B, nh, T, hs): add .transpose(1, 2)")
        expect(got.shape not in {(B, nh, hs, T), (B, hs, nh, T)},
               f"your result is {tuple(got.shape)}, i.e. (B, nh, hs, T) or (B, hs, nh, T): time and channels are "
               "swapped. View as (B, T, nh, hs), then transpose(1, 2) (not transpose(1, 3) or a permute)")
        expect(
            got.shape == want.shape,
            f"for x of shape (B, T, C) = {(B, T, C)} and n_head={nh} the result should be (B, nh, T, hs) = "
            f"{tuple(want.shape)}, got {tuple(got.shape)}; view as (B, T, nh, hs), then .transpose(1, 2)",
        )
        expect(
            not _close(got, x.reshape(B, nh, T, C // nh)),
            "you reshaped straight to (B, nh, T, hs): that cuts the flat memory of the TIME axis into heads, "
            "so one 'head' mixes channels of different tokens. View as (B, T, nh, hs) first, then transpose(1, 2).",
        )
        expect(
            not _close(got, x.view(B, T, C // nh, nh).permute(0, 3, 1, 2)),
            "your heads take every nh-th channel (interleaved); head h must own the contiguous block of "
            "channels h*hs .. (h+1)*hs - 1, which is what view(B, T, nh, hs) gives",
        )
        expect(
            _close(got, want),
            "got[:, h, t] should equal x[:, t, h*hs:(h+1)*hs]: head h of token t is that token's h-th block of "
            "channels",
        )


def _call_view(fn, *args):
    """Call fn; a .view() on a transposed tensor gets the fix named instead of torch's message."""
    try:
        return fn(*args)
    except RuntimeError as e:
        if "view size is not compatible" in str(e):
            raise ExerciseFailed(
                "your code calls .view() on a transposed tensor, whose memory is no longer laid out as (B, T, C): "
                "call .contiguous() first (y.transpose(1, 2).contiguous().view(B, T, C)) or use .reshape"
            ) from None
        raise


@checker("02.2 merge heads")
def check_merge_heads(fn) -> None:
    """fn(y (B, nh, T, hs)) -> (B, T, nh*hs), heads side by side (the inverse of the split)."""
    for B, nh, T, hs in [(2, 3, 5, 4), (1, 2, 4, 8)]:
        y = torch.randn(B, nh, T, hs)
        got = _call_view(fn, y.clone())
        want = torch.cat([y[:, h] for h in range(nh)], dim=-1)  # (B, T, nh*hs)
        expect(isinstance(got, torch.Tensor), f"return a tensor, got {type(got).__name__}")
        expect(
            got.shape == want.shape,
            f"merging (B, nh, T, hs) = {(B, nh, T, hs)} should give (B, T, C) = {tuple(want.shape)} with C = nh*hs, "
            f"got {tuple(got.shape)}" + (": you concatenated along time (dim 1), put the heads side by side along "
                                         "CHANNELS" if got.shape == (B, nh * T, hs) else ""),
        )
        expect(
            not _close(got, y.reshape(B, T, nh * hs)),
            "you reshaped (B, nh, T, hs) straight to (B, T, C): tokens and heads get scrambled. Transpose to "
            "(B, T, nh, hs) first (.transpose(1, 2).contiguous()), then view(B, T, C).",
        )
        expect(
            _close(got, want),
            "token t's output should be [head 0 | head 1 | ...] concatenated along channels, in head order",
        )
        x = torch.randn(B, T, nh * hs)
        expect(_close(_call_view(fn, _ref_split(x, nh)), x), "merge(split(x)) should give x back")


def _ref_params(d: int, nh: int, nkv: int | None, bias: bool) -> int:
    nkv = nh if nkv is None else nkv
    hs = d // nh
    weights = d * d + 2 * d * (nkv * hs) + d * d  # W_Q, W_K, W_V, W_O
    biases = (d + 2 * nkv * hs + d) if bias else 0
    return weights + biases


@checker("02.3 attention parameter count")
def check_attention_params(fn) -> None:
    """fn(d_model, n_head, n_kv_head=None, bias=True) -> number of parameters of one attention layer."""
    from ..attention import MultiHeadAttention

    for d, nh in [(64, 4), (48, 3), (32, 1)]:
        got = fn(d, nh)
        torch_numel = sum(p.numel() for p in nn.MultiheadAttention(d, nh).parameters())
        expect(isinstance(got, int), f"return a Python int, got {type(got).__name__} ({got!r})")
        expect(
            got != 3 * d * d + 3 * d,
            f"d_model={d}, n_head={nh}: you counted Q, K and V ({3 * d * d + 3 * d}) but not the output "
            f"projection W_O (another {d}x{d} weights + {d} biases)",
        )
        expect(
            got != 4 * d * d,
            f"d_model={d}: {got} = 4 d^2 counts the weights but not the biases (4 d = {4 * d} more)",
        )
        if nh > 1:
            expect(
                got != nh * (4 * d * d + 4 * d),
                "you gave every head its own full-width projections; the heads SHARE the d x d matrices, "
                "each head uses a d x (d/n_head) slice, so the count does not depend on n_head",
            )
        expect(
            got == torch_numel,
            f"d_model={d}, n_head={nh}: expected {torch_numel} parameters (torch.nn.MultiheadAttention has "
            f"that many), got {got}",
        )
        no_bias = fn(d, nh, bias=False)
        expect(no_bias != 4 * d * d + 4 * d, f"with bias=False you still counted the {4 * d} biases: the layer has "
               f"only the 4 d^2 = {4 * d * d} weights")
        expect(no_bias == 4 * d * d, f"with bias=False one layer has 4 d^2 = {4 * d * d} parameters, got {no_bias}")
    for d, nh, nkv in [(64, 8, 2), (64, 8, 1), (96, 6, 3)]:
        got = fn(d, nh, nkv)
        lib = sum(p.numel() for p in MultiHeadAttention(d, nh, nkv).parameters())
        expect(
            got != _ref_params(d, nh, None, True),
            f"with n_kv_head={nkv} < n_head={nh} the key and value projections shrink to d x (n_kv_head * hs); "
            f"you counted full multi-head attention",
        )
        hs = d // nh
        expect(got != 2 * d * d + 2 * d * nkv * d + 2 * d + 2 * nkv * d,
               f"d_model={d}, n_kv_head={nkv}: you gave each key/value head the full width d; a K/V head has the "
               f"head size hs = d / n_head = {hs}, so W_K and W_V are d x (n_kv_head * hs)")
        expect(got != d * d + d * nkv * hs + d * d + d * d + 3 * d + nkv * hs,
               f"d_model={d}, n_kv_head={nkv}: you shrank W_K but not W_V; in grouped-query attention keys AND "
               "values have n_kv_head heads")
        expect(
            got == _ref_params(d, nh, nkv, True) == lib,
            f"d_model={d}, n_head={nh}, n_kv_head={nkv}: expected {lib} "
            f"(W_Q and W_O d x d, W_K and W_V d x (n_kv_head * hs) each, plus biases), got {got}",
        )


@checker("02.4 KV cache size")
def check_gqa_cache_bytes(fn) -> None:
    """fn(config: GPTConfig, batch_size, bytes_per_value=4) -> bytes of a full KV cache."""
    from ..model import GPTConfig

    # the factors 2 (K, V), n_layer, batch and bytes differ within each case, so a missing one can be named
    cases = [
        (GPTConfig(vocab_size=10, block_size=32, n_layer=5, n_head=4, n_embd=32), 3, 4),
        (GPTConfig(vocab_size=10, block_size=16, n_layer=3, n_head=8, n_kv_head=2, n_embd=64), 5, 4),
        (GPTConfig(vocab_size=10, block_size=64, n_layer=3, n_head=6, n_kv_head=1, n_embd=48), 5, 2),
    ]
    for cfg, B, nbytes in cases:
        nkv = cfg.n_kv_head or cfg.n_head
        want = 2 * cfg.n_layer * B * nkv * cfg.block_size * cfg.head_size * nbytes  # K and V
        where = (f"n_layer={cfg.n_layer}, n_head={cfg.n_head}, n_kv_head={cfg.n_kv_head}, n_embd={cfg.n_embd}, "
                 f"block_size={cfg.block_size}, batch={B}, {nbytes} bytes per value")
        try:
            got = fn(cfg, B, nbytes)
        except TypeError as e:
            if cfg.n_kv_head is None and "NoneType" in str(e):
                raise ExerciseFailed(f"({where}) your code computes with n_kv_head=None: None means 'as many K/V "
                                     "heads as query heads', so use n_kv = config.n_kv_head or config.n_head") from None
            raise
        expect(isinstance(got, int), f"return a Python int, got {type(got).__name__}")
        expect(got != want // 2, f"({where}) you counted only the keys: the cache stores keys AND values (x2)")
        expect(got != want // cfg.n_layer, f"({where}) you forgot n_layer: every layer keeps its own keys and values")
        expect(got != want // B, f"({where}) you forgot the batch size: every sequence in the batch has its own cache")
        expect(got != want // nbytes, f"({where}) you counted values, not bytes: multiply by bytes_per_value")
        expect(nbytes == 4 or got != want // nbytes * 4, f"({where}) you used 4 bytes per value whatever "
               "bytes_per_value says (2 for fp16/bf16)")
        expect(got != want * cfg.n_head, f"({where}) you multiplied the number of K/V heads by n_embd; each head "
               "stores head_size = n_embd / n_head numbers per position")
        expect(
            not (nkv != cfg.n_head and got == want // nkv * cfg.n_head),
            f"({where}) you used n_head; the cache stores one key/value per KEY-VALUE head, n_kv_head "
            "(None means n_head)",
        )
        expect(
            got == want,
            f"({where}): expected {want} bytes = 2 (K, V) x n_layer x batch x n_kv_head x block_size x head_size "
            f"x bytes, got {got}",
        )


def _torch_mha(
    c_attn: nn.Linear, c_proj: nn.Module, n_head: int, x: torch.Tensor, causal: bool = True
) -> torch.Tensor:
    """The same layer through torch.nn.MultiheadAttention (its bool mask means True = NOT allowed)."""
    C = x.size(-1)
    ref = nn.MultiheadAttention(C, n_head, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(c_attn.weight)
        ref.in_proj_bias.copy_(c_attn.bias)
        if isinstance(c_proj, nn.Identity):
            ref.out_proj.weight.copy_(torch.eye(C))
            ref.out_proj.bias.zero_()
        else:
            ref.out_proj.weight.copy_(c_proj.weight)
            ref.out_proj.bias.copy_(c_proj.bias)
    T = x.size(1)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    out, _ = ref(x, x, x, attn_mask=future if causal else None, need_weights=False)
    return out


def _mha_variant(x, c_attn, c_proj, n_head, fill=float("-inf"), after=False, scale=None, order=(0, 1, 2)):
    """Causal MHA written out, with one of the common mistakes switched on (to name it when it matches)."""
    B, T, C = x.shape
    hs = C // n_head
    parts = c_attn(x).split(C, dim=2)
    q, k, v = (parts[i].view(B, T, n_head, hs).transpose(1, 2) for i in order)  # (B, nh, T, hs)
    s = q @ k.transpose(-2, -1) / (math.sqrt(hs) if scale is None else scale)
    allowed = torch.ones(T, T, dtype=torch.bool).tril()
    if not after:
        s = s.masked_fill(~allowed, fill)
    w = torch.softmax(s, dim=-1)
    if after:
        w = w * allowed
    return c_proj((w @ v).transpose(1, 2).reshape(B, T, C))


@checker("02.6 multi-head attention from scratch")
def check_multi_head_attention(fn) -> None:
    """fn(x (B, T, C), c_attn: Linear(C, 3C), c_proj: Linear(C, C), n_head) -> causal MHA output (B, T, C)."""
    g = torch.Generator().manual_seed(25)
    for B, T, C, nh in [(2, 5, 16, 4), (1, 7, 24, 3)]:
        hs = C // nh
        c_attn, c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        with torch.no_grad():
            for p in (*c_attn.parameters(), *c_proj.parameters()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        x = torch.randn(B, T, C, generator=g)
        with torch.no_grad():
            x_in = x.clone()
            got = _call_view(fn, x_in, c_attn, c_proj, nh)
            expect(torch.equal(x_in, x), "your function changed its input x in place; compute new tensors instead")
            want = _torch_mha(c_attn, c_proj, nh, x)
            expect(isinstance(got, torch.Tensor), f"return a tensor, got {type(got).__name__}")
            expect(got.shape == want.shape, f"the output should be (B, T, C) = {tuple(want.shape)}, got "
                   f"{tuple(got.shape)}")
            if _close(got, want, 1e-4):
                continue
            expect(bool(torch.isfinite(got).all()),
                   "your output contains NaN: some query has every key masked (-inf everywhere, softmax 0/0). "
                   "Is the mask inverted? True = may attend is the lower triangle, and you fill where it is "
                   "False: scores.masked_fill(~allowed, -inf)")
            mistakes = [
                (dict(fill=0.0), "you filled the masked (future) scores with 0: a score of 0 still gets weight "
                 "e^0 after the softmax, so every query reads future tokens. Fill them with float('-inf')"),
                (dict(after=True), "you applied the causal mask AFTER the softmax (zeroing weights): the remaining "
                 "weights of each row no longer sum to 1. Mask the SCORES with -inf before the softmax"),
                (dict(scale=math.sqrt(C)), f"you divided the scores by sqrt(C) = sqrt({C}); each head's scores are "
                 f"dot products of size-hs vectors, so divide by sqrt(head size) = sqrt({hs})"),
                (dict(scale=1.0), f"the scores are not scaled: divide q k^T by sqrt(head size) = sqrt({hs})"),
            ]
            for order in ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)):
                mistakes.append((dict(order=order), "c_attn(x) holds [q | k | v] in that order along the last "
                                 "dim; you took them as " + "[" + " | ".join("qkv"[i] for i in order) + "]"))
            for kwargs, message in mistakes:
                expect(not _close(got, _mha_variant(x, c_attn, c_proj, nh, **kwargs), 1e-4), message)
            x2 = x.clone()
            x2[:, -1] += 3.0
            got2 = _call_view(fn, x2, c_attn, c_proj, nh)
            if not _close(got[:, :-1], got2[:, :-1], 1e-4):
                no_mask = _torch_mha(c_attn, c_proj, nh, x, causal=False)
                expect(
                    not _close(got, no_mask, 1e-4),
                    "changing the LAST token changed the outputs of earlier tokens: apply the causal mask "
                    "(each query may only see keys at its own position or before)",
                )
                raise ExerciseFailed(
                    "changing the LAST token changed the outputs of earlier tokens. If you do mask the scores "
                    "(with -inf, before the softmax), then your split or merge of the heads mixes different tokens. "
                    "Split with view(B, T, nh, hs).transpose(1, 2) and merge with "
                    "transpose(1, 2).contiguous().view(B, T, C)"
                )
            no_proj = _torch_mha(c_attn, nn.Identity(), nh, x)
            expect(
                not _close(got, no_proj, 1e-4),
                "you merged the heads but stopped there: apply the output projection c_proj to the merged "
                "(B, T, C) tensor; it lets the heads' outputs mix",
            )
            if nh > 1:
                one_head = _torch_mha(c_attn, c_proj, 1, x)
                expect(
                    not _close(got, one_head, 1e-4),
                    f"your output equals ONE head of width {C}: split q, k and v into n_head={nh} heads of "
                    f"size {hs} and scale by sqrt({hs})",
                )
            expect(
                False,
                "the output differs from torch.nn.MultiheadAttention with the same weights. Check: q, k, v = "
                "c_attn(x).split(C, dim=2); each viewed (B, T, nh, hs) and transposed to (B, nh, T, hs); causal "
                "attention per head; heads merged back to (B, T, C); then c_proj",
            )


class _TrainingProbe:
    """What a training function did: optimizers built, optimizer steps, backward passes onto stale gradients."""

    def __init__(self) -> None:
        self.optimizers: list[torch.optim.Optimizer] = []
        self.steps = 0
        self.stale_backwards = 0

    def params(self):
        return [p for opt in self.optimizers for group in opt.param_groups for p in group["params"]]


@contextlib.contextmanager
def _watch_training():
    probe = _TrainingProbe()
    init, backward = torch.optim.Optimizer.__init__, torch.Tensor.backward

    def counting_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        probe.optimizers.append(self)

    def checking_backward(self, *args, **kwargs):
        if any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in probe.params()):
            probe.stale_backwards += 1  # the gradients of the previous step were never cleared
        return backward(self, *args, **kwargs)

    def count_step(optimizer, args, kwargs):
        probe.steps += 1

    handle = register_optimizer_step_post_hook(count_step)
    torch.optim.Optimizer.__init__, torch.Tensor.backward = counting_init, checking_backward
    try:
        yield probe
    finally:
        torch.optim.Optimizer.__init__, torch.Tensor.backward = init, backward
        handle.remove()


@checker("02.5 train with a different number of heads")
def check_train_with_heads(fn) -> None:
    """fn(base_config, n_head, steps, get_batch) -> (model, losses): same model except n_head, trained briefly."""
    from ..model import GPT, GPTConfig

    base = GPTConfig(vocab_size=12, block_size=8, n_layer=1, n_head=4, n_embd=16, dropout=0.0)
    g = torch.Generator().manual_seed(26)
    x = torch.randint(0, 12, (16, 8), generator=g)
    y = torch.cat([torch.full((16, 1), -1), x[:, :-1]], dim=1)  # predict the previous token
    calls = []

    def get_batch():  # one fixed batch: any working training loop drives its loss down within a few steps
        calls.append(1)
        return x, y

    steps = 20
    with torch.random.fork_rng(devices=[]), _watch_training() as probe:  # the notebook's random stream untouched
        torch.manual_seed(0)
        res = fn(base, 2, steps, get_batch)
    expect(isinstance(res, tuple) and len(res) == 2, "return a pair (model, losses)")
    model, losses = res
    expect(isinstance(model, GPT), f"the first item should be the trained minigpt GPT, got {type(model).__name__}")
    expect(model.config.n_head == 2, f"asked for n_head=2, but the model has n_head={model.config.n_head}: "
           "build the config with dataclasses.replace(base_config, n_head=n_head)")
    changed = [f.name for f in dataclasses.fields(base) if f.name != "n_head"
               and getattr(model.config, f.name) != getattr(base, f.name)]
    expect(not changed, f"only n_head should change, but you also changed {changed}; otherwise the comparison "
           "between head counts is not fair")
    expect(
        model.num_params() == GPT(base).num_params(),
        "the model with 2 heads should have exactly as many parameters as the base model with 4 heads",
    )
    expect(isinstance(losses, list | tuple), f"return the losses as a list, got {type(losses).__name__}")
    expect(len(losses) == steps, f"return one loss per step: expected {steps} values, got {len(losses)}")
    expect(not any(isinstance(v, torch.Tensor) and v.requires_grad for v in losses),
           "your losses are tensors that still hold the autograd graph (you appended `loss`): append loss.item(), "
           "a Python float, or every step's graph stays in memory")
    expect(probe.optimizers, "no torch.optim optimizer was created: build torch.optim.AdamW(model.parameters(), "
           "lr=3e-3) once, before the loop (train_steps from section 3 does it)")
    expect(
        len(probe.optimizers) == 1,
        f"you created {len(probe.optimizers)} optimizers for {steps} steps: a new optimizer every step throws away "
        "AdamW's running averages of the gradient and of its square (and its step count), so every step is a "
        "first step of size ~lr in each weight. Create the optimizer ONCE, before the loop",
    )
    opt = probe.optimizers[0]
    expect(isinstance(opt, torch.optim.AdamW | torch.optim.Adam),
           f"the task asks for AdamW (lr 3e-3); you used {type(opt).__name__}")
    expect(abs(opt.param_groups[0]["lr"] - 3e-3) < 1e-9,
           f"the task asks for lr 3e-3, your optimizer has lr {opt.param_groups[0]['lr']}")
    own = {id(p) for p in model.parameters()}
    expect(own <= {id(p) for p in probe.params()}, "the optimizer does not hold the returned model's parameters: "
           "build it from model.parameters() of the model you train and return")
    expect(probe.steps == steps, f"the optimizer stepped {probe.steps} times in {steps} steps: call optimizer.step() "
           "once per step, after loss.backward()")
    expect(probe.stale_backwards == 0,
           f"{probe.stale_backwards} of your backward passes added to the previous step's gradients: call "
           "optimizer.zero_grad() every step (gradients accumulate in .grad until cleared)")
    expect(len(calls) >= steps, f"get_batch() was called {len(calls)} times for {steps} steps: draw a fresh batch "
           "every step, inside the loop, or the model only ever sees one batch")
    vals = [float(v) for v in losses]
    first, last = sum(vals[:5]) / 5, sum(vals[-5:]) / 5
    expect(
        last < first - 0.1,
        f"the loss barely moved ({first:.3f} -> {last:.3f}) on an easy task: call loss.backward() and "
        "optimizer.step() every step (with optimizer.zero_grad() before the backward pass)",
    )
