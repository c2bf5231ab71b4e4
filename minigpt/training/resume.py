"""Saving and resuming a run: what `Trainer.save` writes, and how a run continues exactly.

`save_run(trainer, which)` is `Trainer.save`. `train_state(trainer)` is the dict saved as
train_state.pt next to the weights (optimizer, grad scaler, every rank's random streams, history,
early-stopping counters, tokens and time so far). `resume_or_seed(trainer)` starts a run: from the
latest checkpoint in `out_dir` when asked to resume (`load_run`), else from the seed. A resumed run
draws exactly the batches a straight run would have; it refuses a checkpoint written with another
recipe (`SAME_ON_RESUME`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..checkpoint import (
    LATEST_DIR,
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_train_state,
    read_meta,
    save_checkpoint,
)
from .distributed import all_gather_objects
from .guard import TrainingDiverged, divergence_hint
from .history import History
from .rng import rng_state, seed_everything, set_rng_state

if TYPE_CHECKING:  # typing only: train.py imports this module
    from ..train import TrainConfig, Trainer

__all__ = ["RESUMED_FIELDS", "SAME_ON_RESUME", "load_run", "refuse_other_run", "restore_random_streams",
           "resume_or_seed", "save_run", "train_state"]

log = logging.getLogger("minigpt.train")

# fields a resumed run must share with the run that wrote the checkpoint (Trainer refuses otherwise)
SAME_ON_RESUME = ("optimizer", "batch_size", "grad_accum", "seed", "beta1", "beta2", "muon_momentum")
# the saved run's plan and recipe: what `train(resume=True)` and `minigpt train --resume` take from the
# checkpoint unless the caller says otherwise
RESUMED_FIELDS = ("max_iters", "batch_size", "lr", "min_lr", "warmup_iters", "lr_decay_iters", "schedule",
                  "weight_decay", "beta1", "beta2", "grad_clip", "grad_accum", "eval_interval", "eval_iters",
                  "early_stopping_patience", "min_delta", "seed", "max_time_s", "optimizer", "muon_momentum",
                  "checkpoint_interval", "log_interval")


def resume_or_seed(trainer: Trainer) -> bool:
    """Continue from out_dir's latest checkpoint if asked and there is one (True); else seed."""
    if trainer.resume and trainer.out_dir is not None:
        ckpt = latest_checkpoint(trainer.out_dir)
        if ckpt is not None:
            load_run(trainer, ckpt)
            trainer.progress.say(f"resumed from {ckpt} at step {trainer.step}")
            return True
        trainer.progress.say(f"no checkpoint in {trainer.out_dir}; starting from scratch")
    seed_everything(trainer.config.seed + trainer.dist.rank)
    return False


def save_run(trainer: Trainer, which: str = LATEST_DIR) -> Path | None:
    """`Trainer.save`: write `out_dir/ckpt` (with training state) or `out_dir/best` (weights only).

    Collective under DDP (every rank must call it); rank 0 writes. Refuses non-finite weights,
    so a diverging run never replaces a good checkpoint.
    """
    if trainer.out_dir is None:
        return None
    state = train_state(trainer) if which == LATEST_DIR else None
    finite = all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters())  # every rank raises together
    if which == LATEST_DIR:
        trainer._last_saved_step = trainer.step
    if not finite:
        raise TrainingDiverged(
            f"weights are NaN/Inf at step {trainer.step}; not saving over the last good checkpoint "
            f"in {trainer.out_dir}. " + divergence_hint(trainer.dtype, trainer.config.grad_clip, trainer.config.lr),
            step=trainer.step, history=trainer.history,
        )
    if not trainer.is_main:
        return None
    path = save_checkpoint(
        trainer.out_dir / which, trainer.model, tokenizer=trainer.tokenizer, train_config=trainer.config,
        train_state=state, step=trainer.step, best_val_loss=trainer.best_val_loss, metadata=trainer.metadata,
    )
    trainer._write_history()
    return path


def train_state(trainer: Trainer) -> dict[str, Any]:
    """Everything besides the weights that the next step depends on (train_state.pt)."""
    # every rank's random streams, so a resumed DDP run draws the same data
    streams = all_gather_objects(trainer.dist, (trainer.generator.get_state(), rng_state()))
    return {
        "step": trainer.step,
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler.is_enabled() else None,
        "rng": [s[1] for s in streams],
        "data_rng": [s[0] for s in streams],
        "history": trainer.history.to_dict(),
        "best_val_loss": trainer.early_stopping.best,
        "evals_without_improvement": trainer.early_stopping.bad_evals,
        "tokens_seen": trainer.tokens_seen,
        "elapsed": trainer.elapsed,
        "world_size": trainer.dist.world_size,
    }


def load_run(trainer: Trainer, path: Path) -> None:
    """Weights and training state of the checkpoint at `path` into `trainer` (all or nothing)."""
    state = load_train_state(path)  # validated; read before anything of this run is replaced
    missing = [k for k in ("step", "optimizer", "history", "rng", "data_rng") if k not in state]
    if missing:
        raise CheckpointError(f"the training state in {path} lacks {missing}; it was not written by Trainer")
    refuse_other_run(trainer.config, path, read_meta(path).get("train_config") or {}, say=trainer.progress.say)
    load_checkpoint(path, device=trainer.device, model=trainer.model)
    try:
        trainer.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler") and trainer.scaler.is_enabled():
            trainer.scaler.load_state_dict(state["scaler"])
        trainer.history = History.from_dict(state["history"])
        restore_random_streams(trainer, state)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
        raise CheckpointError(f"the training state in {path} does not fit this run "
                              f"({type(e).__name__}: {e}); start a new run or use another checkpoint") from e
    trainer.step = trainer._last_saved_step = int(state["step"])
    trainer.history.status = "running"
    trainer.early_stopping.best = state.get("best_val_loss")
    trainer.early_stopping.bad_evals = int(state.get("evals_without_improvement", 0))
    trainer.tokens_seen = int(state.get("tokens_seen", 0))
    trainer._elapsed_before = float(state.get("elapsed", 0.0))


def refuse_other_run(config: TrainConfig, path: Path, saved: dict[str, Any],
                     say: Callable[[str], None] | None = None) -> None:
    """A resumed run must continue the same recipe: optimizer state, data stream and batch shape
    only fit the run that wrote them. Other plan changes (e.g. more steps) are allowed, and `say`d."""
    saved = {"optimizer": "adamw", **saved}
    changed = [f"{k} {saved[k]!r} -> {getattr(config, k)!r}" for k in RESUMED_FIELDS
               if k in saved and k not in SAME_ON_RESUME and saved[k] != getattr(config, k)]
    if changed and say is not None:  # the run no longer equals an uninterrupted one
        say(f"note: the resumed run changes its plan: {', '.join(changed)}")
    for name in SAME_ON_RESUME:
        if name in saved and saved[name] != getattr(config, name):
            flag = "--" + name.replace("_", "-")
            raise ValueError(
                f"{path} was trained with {name}={saved[name]!r} but this run uses {name}="
                f"{getattr(config, name)!r}; resume with {name}={saved[name]!r} (CLI: {flag} "
                f"{saved[name]}, or leave the flag out), or start a new run in another out_dir"
            )


def restore_random_streams(trainer: Trainer, state: dict[str, Any]) -> None:
    """This rank's data and global random streams as saved; new deterministic ones if the world size changed."""
    rank = trainer.dist.rank
    if state.get("world_size", 1) == trainer.dist.world_size:
        trainer.generator.set_state(state["data_rng"][rank])
        set_rng_state(state["rng"][rank])
    else:  # different number of processes: continue deterministically, but on new streams
        log.warning("checkpoint was written with world size %s, now %s: data order will differ",
                    state.get("world_size"), trainer.dist.world_size)
        trainer.generator.manual_seed(trainer.config.seed + rank + 7919 * trainer.step)
        torch.manual_seed(trainer.config.seed + rank + 7919 * trainer.step)
