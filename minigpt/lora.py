"""LoRA from scratch: fine-tune a frozen model through small low-rank updates.

Hu et al. (2021), "LoRA: Low-Rank Adaptation of Large Language Models". A frozen weight W (out, in)
is used as ``W + (alpha / r) * B @ A`` with A (r, in) and B (out, r), r much smaller than in and out.
Only A and B train: r * (in + out) numbers instead of in * out. B starts at zero, so the adapted model
first computes exactly what the base model did; A starts random (Kaiming-uniform, as in the paper's
reference code and ``peft``), so the gradient of B is not zero at step 0.

After training, :meth:`LoRALinear.merge` folds the update into W, so inference costs nothing extra.
The layout (``lora_A`` (r, in), ``lora_B`` (out, r), scaling ``alpha / r``) is the one ``peft`` uses for
``nn.Linear``, so weights copy across one to one (see tests/test_lora.py).

Shapes: N any leading dims, in/out the features of the wrapped ``nn.Linear``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import count_parameters

__all__ = ["LoRALinear", "apply_lora", "count_trainable", "lora_state_dict", "merge_lora"]


class LoRALinear(nn.Module):
    """An ``nn.Linear`` (frozen) plus a trainable rank-``r`` update scaled by ``alpha / r``."""

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if not isinstance(r, int) or r < 1:
            raise ValueError(f"LoRA rank r must be a positive integer, got {r!r} (4-16 is typical)")
        if r > min(base.in_features, base.out_features):
            raise ValueError(
                f"rank r={r} is larger than the layer itself ({base.out_features}x{base.in_features}); "
                "a low-rank update needs r < min(in_features, out_features)"
            )
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.r, self.alpha = r, alpha
        self.scaling = alpha / r  # keeps the update's size roughly independent of r
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=w.device, dtype=w.dtype))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=w.device, dtype=w.dtype))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's default init, as peft does
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        """The update (alpha / r) * B @ A, shaped like the base weight (out, in)."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # (N, out), with the merged update already inside W when merged
        if not self.merged:
            # x A^T B^T costs r * (in + out) per token; never form the (out, in) update here
            y = y + self.scaling * F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return y

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the frozen weight: same outputs, no extra matmuls at inference."""
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of the weight (to keep training or swap adapters)."""
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.alpha}"


def apply_lora(
    model: nn.Module,
    targets: Sequence[str] = ("c_attn",),
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
) -> nn.Module:
    """Freeze every parameter of ``model`` and wrap each ``nn.Linear`` whose name ends in a target.

    Targets match the last part of a module name (``"c_attn"`` hits ``transformer.h.0.attn.c_attn``),
    like peft's ``target_modules``. Changes ``model`` in place and returns it.
    """
    if isinstance(targets, str):
        targets = (targets,)
    for p in model.parameters():
        p.requires_grad_(False)
    hits = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.split(".")[-1] in targets
    ]
    if not hits:
        linear = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"no nn.Linear named {list(targets)} in this model; its Linear layers are named {linear}")
    for name, module in hits:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(module, r=r, alpha=alpha, dropout=dropout))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by a plain nn.Linear holding W + update (in place); returns ``model``."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.base)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors: what you save and share instead of a whole fine-tuned model."""
    return {k: v for k, v in model.state_dict().items() if ".lora_A" in k or ".lora_B" in k}


count_trainable = count_parameters  # (trainable, total): the name this module has always used
