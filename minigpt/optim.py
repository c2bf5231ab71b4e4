"""Muon for the hidden weight matrices, AdamW for everything else.

Why it is here: a laptop run is *step-limited*. In a minute of CPU time a small GPT takes a few
hundred optimizer steps, so what decides the loss is how far each step can usefully move the
weights. Adam's update for a weight matrix is dominated by a few large singular directions; Muon
(Jordan et al., 2024, "Muon: an optimizer for hidden layers in neural networks") keeps SGD
momentum and replaces the matrix update by its nearest semi-orthogonal matrix, U V^T for the
momentum M = U S V^T, so every direction moves at the same rate. On tiny Shakespeare that takes
the same number of steps noticeably further than AdamW (measurements: README.md, Benchmarks).

Muon only makes sense for 2-D matrices inside the network. Embeddings, the output layer, biases
and norm gains keep AdamW, as in the reference implementation; :class:`MuonAdamW` holds both and
behaves like one optimizer (one ``param_groups`` list, one ``step``, one state dict).

U V^T is computed without an SVD by a quintic Newton-Schulz iteration in matmuls only; matrices
of the same shape are orthogonalised together in one batched matmul, which on a CPU is what
keeps the optimizer's cost small next to the forward and backward pass.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["Muon", "MuonAdamW", "fast_bf16_matmul", "newton_schulz", "split_muon_params"]

# Coefficients of the quintic iteration from the reference implementation: chosen to push every
# singular value in (0, 1] towards 1 as fast as possible in 5 steps (they land in ~[0.7, 1.2],
# which works as well as exactly 1 for optimisation).
_NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(G: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately U V^T for each matrix G = U S V^T in a batch (..., m, n).

    Dividing by the Frobenius norm puts every singular value in [0, 1]; each step then maps a
    singular value s to a s + b s^3 + c s^5 while leaving U and V alone.
    """
    a, b, c = _NS_COEFFS
    X = G / (G.norm(dim=(-2, -1), keepdim=True) + eps)
    tall = X.size(-2) > X.size(-1)
    if tall:  # iterate on the wide orientation: the Gram matrix X X^T is then the small one
        X = X.mT
    lead, (m, n) = X.shape[:-2], X.shape[-2:]
    X = X.reshape(-1, m, n)  # (k, m, n): any leading dims become one batch
    for _ in range(steps):
        A = torch.bmm(X, X.mT)  # (k, m, m)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b A + c A^2, one fused call
        X = torch.baddbmm(X, B, X, beta=a)  # a X + B X
    X = X.reshape(*lead, m, n)
    return X.mT if tall else X


def fast_bf16_matmul(device: torch.device | str) -> bool:
    """Whether bf16 matmuls beat fp32 on this device: CUDA GPUs with bf16 (Ampere and newer) and
    CPUs with bf16 dot-product instructions (AVX512-BF16 / AMX). Elsewhere bf16 is emulated and slower."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # private, so guarded
        try:
            return bool(probe()) if probe is not None else False
        except Exception:
            return False
    return False


class Muon(torch.optim.Optimizer):
    """Momentum, orthogonalised by Newton-Schulz, for 2-D parameters.

    lr: the learning rate, on AdamW's scale: each update is multiplied by 0.2 * sqrt(max(m, n)),
        which gives it the RMS of a typical AdamW update (Liu et al., 2025, "Muon is scalable for
        LLM training"), so one learning rate and schedule can serve both optimizers.
    momentum, nesterov: SGD momentum on the raw gradient, before orthogonalisation.
    weight_decay: decoupled, as in AdamW: ``p *= 1 - lr * weight_decay``.
    ns_steps: Newton-Schulz iterations (5 is the reference setting).
    ns_dtype: precision of the iteration; None = bfloat16 where the hardware multiplies it natively
        (the reference runs it in bf16: it only needs the singular values near 1), else float32.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        ns_steps: int = 5,
        ns_dtype: torch.dtype | None = None,
    ) -> None:
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"Muon: lr must be a positive number, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Muon: momentum must be in [0, 1), got {momentum}")
        if ns_steps < 1:
            raise ValueError(f"Muon: ns_steps must be >= 1, got {ns_steps}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, ns_steps=ns_steps)
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype
        self._dtype_by_device: dict[torch.device, torch.dtype] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(
                        f"Muon orthogonalises matrices; got a parameter of shape {tuple(p.shape)}. "
                        "Give embeddings, biases and norm gains to AdamW (see split_muon_params)."
                    )

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            # matrices of one shape, up to a transpose, are orthogonalised in one batched call
            by_shape: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mu)  # buf = mu * buf + (1 - mu) * grad
                update = p.grad.lerp(buf, mu) if group["nesterov"] else buf
                wide = update if update.size(0) <= update.size(1) else update.mT
                by_shape[tuple(wide.shape)].append((p, wide))
            for shape, items in by_shape.items():
                dtype = self._ns_dtype(items[0][0].device)
                ortho = newton_schulz(torch.stack([w.to(dtype) for _, w in items]), group["ns_steps"])
                scale = 0.2 * math.sqrt(max(shape))  # the RMS of an AdamW update (see the docstring)
                for (p, _), o in zip(items, ortho.unbind(0)):
                    if wd:
                        p.mul_(1 - lr * wd)
                    p.add_(o if p.size(0) <= p.size(1) else o.mT, alpha=-lr * scale)
        return loss

    def _ns_dtype(self, device: torch.device) -> torch.dtype:
        if self.ns_dtype is not None:
            return self.ns_dtype
        if device not in self._dtype_by_device:
            self._dtype_by_device[device] = torch.bfloat16 if fast_bf16_matmul(device) else torch.float32
        return self._dtype_by_device[device]


def split_muon_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(matrices for Muon, everything else for AdamW).

    Muon takes the weights of the ``nn.Linear`` layers inside the network, the maps from one hidden
    space to another. The output layer (``lm_head``, or any Linear producing ``vocab_size`` logits)
    and embedding tables (token and position) are lookups into or out of the vocabulary rather than
    hidden maps, so they stay with AdamW, like biases and norm gains.
    """
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    lm_head = getattr(model, "lm_head", None)
    outputs = {id(lm_head.weight)} if isinstance(lm_head, nn.Linear) else set()
    hidden = {
        id(m.weight) for m in model.modules()
        if isinstance(m, nn.Linear) and id(m.weight) not in outputs and m.out_features != vocab
    }
    muon: list[nn.Parameter] = []
    other: list[nn.Parameter] = []
    for p in model.parameters():  # a tied parameter is yielded once
        if p.requires_grad:
            (muon if id(p) in hidden else other).append(p)
    return muon, other


class MuonAdamW:
    """Muon for the hidden matrices and AdamW for the rest, driven as one optimizer.

    ``param_groups`` is the AdamW groups followed by the Muon group, so a trainer that sets
    ``group["lr"]`` each step schedules both. ``state_dict`` holds both optimizers' states.
    """

    def __init__(self, adamw: torch.optim.Optimizer, muon: Muon) -> None:
        self.adamw, self.muon = adamw, muon

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.adamw.param_groups + self.muon.param_groups

    def step(self, closure: Any = None) -> Any:
        loss = self.adamw.step(closure)
        self.muon.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.adamw.zero_grad(set_to_none=set_to_none)
        self.muon.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"adamw": self.adamw.state_dict(), "muon": self.muon.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"adamw", "muon"}:
            raise ValueError(
                "this optimizer state was not saved by MuonAdamW (expected keys 'adamw' and 'muon'); "
                "resume with the optimizer the run was started with"
            )
        self.adamw.load_state_dict(state["adamw"])
        self.muon.load_state_dict(state["muon"])

    def __repr__(self) -> str:
        n_m = sum(p.numel() for g in self.muon.param_groups for p in g["params"])
        n_a = sum(p.numel() for g in self.adamw.param_groups for p in g["params"])
        return f"MuonAdamW(muon: {n_m:,} parameters in matrices, adamw: {n_a:,} others)"
