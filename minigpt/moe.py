"""A small mixture-of-experts feed-forward: more parameters, the same compute per token.

A router (one linear layer) scores E expert MLPs for every token; each token goes through its top-k
experts only, and their outputs are mixed with the router's probabilities (Shazeer et al. 2017,
"Outrageously Large Neural Networks"; top-1 routing is the Switch Transformer, Fedus et al. 2021).
With k = 1 a model with E experts holds E times the feed-forward parameters of a dense model but
spends the FLOPs of one.

Left alone, a router collapses onto a few experts (they get trained more, so they get picked more).
The Switch Transformer's load-balancing loss (its eq. 4) pushes back:

    aux = E * sum_i f_i * P_i

f_i: fraction of the token-to-expert assignments that went to expert i (counts, no gradient);
P_i: mean router probability of expert i over the tokens (differentiable). Both sum to 1; aux is 1
when routing is uniform and up to E when everything goes to one expert. Add ``coef * aux`` (0.01 in
the paper) to the language-model loss.

Shapes: B batch, T time, C d_model, N = B * T tokens, E experts, k experts per token.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import FeedForward

__all__ = ["MoEFeedForward", "load_balancing_loss", "moe_aux_loss", "use_moe", "WithAuxLoss"]


def load_balancing_loss(router_probs: torch.Tensor, expert_index: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Switch Transformer auxiliary loss E * sum_i f_i P_i.

    router_probs (N, E): softmax of the router logits; expert_index (N, k): chosen experts per token.
    """
    N = router_probs.size(0)
    counts = torch.bincount(expert_index.reshape(-1), minlength=n_experts).to(router_probs.dtype)  # (E,)
    f = counts / max(N * expert_index.size(-1), 1)  # share of assignments, no gradient
    P = router_probs.mean(dim=0)  # (E,) mean routing probability, carries the gradient
    return n_experts * (f * P).sum()


class MoEFeedForward(nn.Module):
    """Router + E expert MLPs (each :class:`minigpt.blocks.FeedForward`); every token uses its top-k.

    After each forward pass: ``aux_loss`` (scalar tensor, the load-balancing loss) and ``counts``
    (E,) how many tokens each expert processed.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        n_experts: int = 4,
        top_k: int = 1,
        activation: str = "gelu",
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if n_experts < 1 or not 1 <= top_k <= n_experts:
            raise ValueError(f"need n_experts >= 1 and 1 <= top_k <= n_experts, got {n_experts}, {top_k}")
        self.n_experts, self.top_k = n_experts, top_k
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(FeedForward(d_model, d_ff, activation, dropout, bias) for _ in range(n_experts))
        self.aux_loss = torch.zeros(())
        self.counts = torch.zeros(n_experts, dtype=torch.long)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, C) -> router probs (N, E), gate weights (N, k), expert ids (N, k)."""
        probs = F.softmax(self.router(x).float(), dim=-1)  # (N, E)
        gate, index = probs.topk(self.top_k, dim=-1)  # (N, k) each
        if self.top_k > 1:
            gate = gate / gate.sum(dim=-1, keepdim=True)  # mix the chosen experts with weights summing to 1
        # top-1 keeps the raw probability (Switch): the gate is then the router's only path to a gradient
        return probs, gate.to(x.dtype), index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        flat = x.reshape(-1, C)  # (N, C)
        probs, gate, index = self.route(flat)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            tok, slot = (index == e).nonzero(as_tuple=True)  # which tokens picked e, in which of their k slots
            if tok.numel():
                out.index_add_(0, tok, expert(flat[tok]) * gate[tok, slot].unsqueeze(-1))
        self.aux_loss = load_balancing_loss(probs, index, self.n_experts)
        self.counts = torch.bincount(index.reshape(-1), minlength=self.n_experts).detach()
        return out.view(B, T, C)


def moe_aux_loss(model: nn.Module) -> torch.Tensor:
    """Sum of the load-balancing losses of every MoE layer's last forward pass."""
    losses = [m.aux_loss for m in model.modules() if isinstance(m, MoEFeedForward)]
    if not losses:
        raise ValueError("the model has no MoEFeedForward layers; call use_moe(model) first")
    return torch.stack([loss.float() for loss in losses]).sum()


def use_moe(model: nn.Module, n_experts: int = 4, top_k: int = 1, d_ff: int | None = None) -> nn.Module:
    """Replace the feed-forward (``block.mlp``) of every block of a minigpt GPT with a fresh MoE layer.

    ``d_ff`` is each expert's hidden width (default: the dense layer's). For a dense model with the same
    *active* parameters per token as an MoE with k experts of width d, give the dense model width k * d.
    """
    blocks = getattr(getattr(model, "transformer", None), "h", None)
    if blocks is None:
        raise TypeError("use_moe expects a minigpt GPT (blocks at model.transformer.h)")
    for block in blocks:
        dense = block.mlp
        width = d_ff or dense.c_proj.in_features
        bias = dense.c_fc.bias is not None
        moe = MoEFeedForward(dense.c_fc.in_features, width, n_experts, top_k, dense.activation, 0.0, bias)
        block.mlp = moe.to(dense.c_fc.weight.device)
    return model


class WithAuxLoss(nn.Module):
    """Wrap a GPT with MoE layers so ``forward`` returns (logits, lm_loss + coef * aux) while training.

    The trainer only sees ``(logits, loss)``; this adds the balancing term in training mode and leaves
    the evaluation loss the plain cross-entropy, comparable with a dense model's.
    """

    def __init__(self, model: nn.Module, coef: float = 0.01) -> None:
        super().__init__()
        self.model, self.coef = model, coef

    @property
    def config(self):
        return self.model.config

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, **kwargs):
        logits, loss = self.model(idx, targets, **kwargs)
        if loss is not None and self.training and self.coef:
            loss = loss + self.coef * moe_aux_loss(self.model)
        return logits, loss
