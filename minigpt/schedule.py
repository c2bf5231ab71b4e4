"""Learning-rate schedules as plain functions of the step.

The trainer sets the learning rate of every parameter group before each optimizer step from
`lr_at(step, ...)`, the way nanoGPT does. A schedule that is a pure function of the step has no
state to save, so resuming at step k gives exactly the rate a straight run would use there.

Warmup is linear (Goyal et al. 2017, "Accurate, Large Minibatch SGD"): a freshly initialised
transformer with Adam is unstable at full learning rate for the first few hundred steps. Cosine
decay follows Loshchilov & Hutter 2017 (SGDR), without restarts.
"""

from __future__ import annotations

import math

__all__ = ["SCHEDULES", "lr_at"]

SCHEDULES = ("cosine", "linear", "constant")


def lr_at(
    step: int,
    *,
    lr: float,
    min_lr: float,
    warmup_iters: int,
    decay_iters: int,
    schedule: str = "cosine",
) -> float:
    """Learning rate for optimizer step `step` (0-based).

    - warmup: `lr * (step + 1) / (warmup_iters + 1)` for `step < warmup_iters` (never 0, so
      step 0 already learns something), for every schedule;
    - "cosine": from `lr` at `warmup_iters` down to `min_lr` at `decay_iters`, then `min_lr`;
    - "linear": the same end points on a straight line;
    - "constant": `lr` after warmup.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if step < warmup_iters:
        return lr * (step + 1) / (warmup_iters + 1)
    if schedule == "constant":
        return lr
    if step >= decay_iters:
        return min_lr
    ratio = (step - warmup_iters) / max(1, decay_iters - warmup_iters)  # in [0, 1)
    if schedule == "linear":
        return lr - ratio * (lr - min_lr)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return min_lr + coeff * (lr - min_lr)
