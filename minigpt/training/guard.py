"""The NaN guard: when a step must not be taken, and the error that says what to try instead.

`NanGuard` looks at each step's loss and gradient norm; `record_divergence` writes the "diverged"
row and files and builds the `TrainingDiverged` that `Trainer.fit()` raises (the weights of that step
are never applied, and a checkpoint is never written over with NaN weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..checkpoint import latest_checkpoint
from .history import History

if TYPE_CHECKING:  # typing only: train.py imports this module
    from ..train import Trainer

__all__ = ["NanGuard", "TrainingDiverged", "divergence_hint", "record_divergence"]


class TrainingDiverged(FloatingPointError):
    """Loss or gradient became NaN/Inf. `.history` holds the rows up to that point."""

    def __init__(self, message: str, *, step: int, history: History | None = None):
        super().__init__(message)
        self.step = step
        self.history = history


@dataclass
class NanGuard:
    """Says when a step must not be taken: loss or gradient norm NaN/Inf.

    With fp16's GradScaler an inf gradient now and then is expected (the scaler skips that step and
    lowers the scale), so there only more than `max_skipped` skips in a row count as divergence.
    """

    scaled: bool  # fp16 with a GradScaler
    max_skipped: int = 20
    skipped: int = 0

    def diverged(self, loss: float, grad_norm: float) -> bool:
        bad_grad = not math.isfinite(grad_norm)
        if self.scaled:
            self.skipped = self.skipped + 1 if bad_grad else 0
            bad_grad = self.skipped > self.max_skipped
        return bad_grad or not math.isfinite(loss)


def divergence_hint(dtype: torch.dtype | None, grad_clip: float, lr: float) -> str:
    """What to try when a run diverges, for the error message."""
    hints = [f"the learning rate may be too high: lower lr (e.g. {lr / 3:.1e})"]
    hints.append("enable gradient clipping (grad_clip=1.0)" if not grad_clip else "")
    if dtype is torch.float16:
        hints.append("float16 can overflow: use dtype='bfloat16' (or 'float32')")
    return "; ".join(h for h in hints if h) + "."


def record_divergence(trainer: Trainer, loss: float, grad_norm: float, lr: float) -> TrainingDiverged:
    """Record the divergence (history row, files, "end" event) and build the error to raise."""
    trainer.history.append(step=trainer.step, event="diverged", train_loss=loss, lr=lr, grad_norm=grad_norm,
                           tokens_seen=trainer.tokens_seen, elapsed=trainer.elapsed)
    trainer.history.status = "diverged"
    trainer._write_history()
    trainer._emit("end", {"status": "diverged"})
    kept = latest_checkpoint(trainer.out_dir) if trainer.out_dir is not None else None
    where = f"The last good checkpoint is kept at {kept}." if kept else "No checkpoint was written."
    hint = divergence_hint(trainer.dtype, trainer.config.grad_clip, lr)
    msg = (f"training diverged at step {trainer.step + 1}: loss={loss}, grad norm={grad_norm}, lr={lr:.3g}. "
           f"The weights were not updated. Hints: {hint} {where}")
    return TrainingDiverged(msg, step=trainer.step, history=trainer.history)
