"""One model-agnostic trainer for every model of the course (GPT, encoder-decoder, baselines).

`Trainer.fit` is the loop, one optimizer step at a time (nanoGPT's recipe, made importable):

    while step < max_iters:
        set the learning rate of this step     (a pure function of the step: `minigpt.schedule`)
        for each of grad_accum micro-batches:  get a batch, forward under autocast, backward of loss / grad_accum
        clip the gradient norm; stop if loss or norm is NaN/Inf (before the step writes them into the weights)
        optimizer step
        log; evaluate / save / stop when due

Everything else is a small named piece beside it, most in `minigpt/training/`: `History` and
`ProgressLog` (what is recorded and shown, `training.history`), `EarlyStopping`, the NaN guard
(`training.guard`), saving and exact resume (`training.resume`, with RNG state from `training.rng`),
torchrun helpers and device placement (`training.distributed`), Ctrl-C at a step boundary
(`training.interrupt`), and run planning (`plan_run`, here: epochs to steps, warmup and decay
clamps, a time budget turned into a step count).

Data: `get_batch(split, generator) -> tuple[Tensor, ...]` with split "train" or "val", targets
last (`(x, y)` for a language model, `(src, tgt_in, targets)` for the encoder-decoder). The
trainer owns the generators (seeded `seed + rank`), saves their state in checkpoints, and so
resumes on exactly the batches a straight run would have drawn. `lm_batches` builds such a
function from token tensors (with `minigpt.data.get_batch`, which samples one split).

Evaluation: every `eval_interval` steps, the mean train/val loss over `eval_iters` fixed batches
(the same batches each time, so the curve moves only because the model does); `out_dir/best/`
when val loss improves, `out_dir/ckpt/` for resuming. Training stops at `max_iters`, at
`max_time_s`, on early stopping, when the callback returns True, or on Ctrl-C (a checkpoint is
saved and `fit` returns). `fit()` returns a `History`; divergence raises `TrainingDiverged` and
never overwrites a good checkpoint.

Distributed: launch the same script with `torchrun --nproc_per_node=K`; the model is wrapped in
DistributedDataParallel, data is sampled per rank, files are written on rank 0 only, and
`grad_accum` is per rank (one step sees `batch * grad_accum * world_size` sequences).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import (
    BEST_DIR,
    LATEST_DIR,
    CheckpointError,
    latest_checkpoint,
    prepare_out_dir,
    read_meta,
    unwrap_model,
)
from .data import check_length
from .data import get_batch as sample_split
from .device import autocast, autocast_dtype, get_device, make_grad_scaler
from .optim import Muon, MuonAdamW, split_muon_params
from .schedule import SCHEDULES, lr_at
from .training.distributed import (
    DistInfo,
    all_mean,
    any_rank,
    cleanup_distributed,
    place_model,
    setup_distributed,
)
from .training.guard import NanGuard, TrainingDiverged, record_divergence
from .training.history import COLUMNS, History, ProgressLog
from .training.interrupt import StopSignals
from .training.resume import RESUMED_FIELDS, resume_or_seed, save_run
from .training.rng import rng_state, set_rng_state

__all__ = [
    "COLUMNS",
    "DistInfo",
    "EarlyStopping",
    "History",
    "LMBatches",
    "NanGuard",
    "RunPlan",
    "TrainConfig",
    "TrainEvent",
    "Trainer",
    "TrainingDiverged",
    "cleanup_distributed",
    "configure_optimizer",
    "fit_to_budget",
    "lm_batches",
    "measure_steps_per_second",
    "plan_run",
    "setup_distributed",
    "train",
]

log = logging.getLogger(__name__)

# old private names, kept for code that imported them
_rng_state, _set_rng_state = rng_state, set_rng_state

# The trainer's data source: `get_batch(split, generator) -> (inputs..., targets)`, a function of the
# split. `minigpt.data.get_batch(data, block_size, batch_size)` samples one tensor; `LMBatches` wraps
# it into a source (the parameter keeps the name `get_batch`, which DESIGN.md freezes).
BatchFn = Callable[[str, torch.Generator], Sequence[torch.Tensor]]
GetBatch = BatchFn  # the older name
DTYPES = ("auto", "float32", "bfloat16", "float16")
OPTIMIZERS = ("adamw", "muon")
STATUSES = ("running", "completed", "time_limit", "early_stopped", "stopped", "interrupted", "diverged")
_EVAL_SEED_OFFSET = 10_007  # eval batches come from their own fixed stream, never the training one


@dataclass
class TrainConfig:
    max_iters: int = 2000  # optimizer steps
    batch_size: int = 12  # sequences per micro-batch per rank (read by lm_batches and the CLI)
    lr: float = 1e-3  # peak learning rate (after warmup)
    min_lr: float | None = None  # floor of the decay; None = lr / 10 (Chinchilla's rule of thumb)
    warmup_iters: int = 100  # linear warmup steps
    lr_decay_iters: int | None = None  # step at which decay reaches min_lr; None = max_iters
    schedule: str = "cosine"  # "cosine", "linear" or "constant" (all after warmup)
    weight_decay: float = 0.1  # AdamW decay on matrices/embeddings only (dim >= 2)
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.95  # AdamW second-moment decay (0.99 suits tiny char models with few tokens/step)
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping (the norm is still logged)
    grad_accum: int = 1  # micro-batches per optimizer step (per rank)
    eval_interval: int = 250  # steps between evaluations; 0 = never evaluate (no best/, no early stop)
    eval_iters: int = 20  # batches per split per evaluation
    early_stopping_patience: int | None = None  # stop after this many evals without a better val loss
    min_delta: float = 0.0  # an eval must beat the best val loss by more than this to count
    dtype: str = "auto"  # "auto" (bf16 on capable CUDA, fp16+GradScaler on older CUDA, fp32 on CPU/MPS)
    compile: bool = False  # model.compile() before training (slow first steps, faster after on GPU)
    device: str = "auto"  # "auto" = cuda, then mps, then cpu
    seed: int = 1337  # seeds torch/python/numpy and the data generators (seed + rank)
    out_dir: str | None = "out"  # checkpoints and history files; None = keep everything in memory
    checkpoint_interval: int = 0  # steps between ckpt/ saves; 0 = at every evaluation
    log_interval: int = 10  # steps between history rows / progress-bar updates
    max_time_s: float | None = None  # wall-clock budget in seconds (resumed runs count earlier time)
    progress: bool = True  # tqdm progress bar and one line per evaluation (rank 0)
    fused: bool | None = None  # fused AdamW kernel; None = on CUDA and CPU (not MPS)
    optimizer: str = "adamw"  # "adamw", or "muon": Muon for hidden matrices + AdamW for the rest (minigpt.optim)
    muon_momentum: float = 0.95  # Muon's momentum (optimizer="muon" only)

    def __post_init__(self) -> None:
        """Every field checked: type, finite, in range; the message names the field (and the CLI flag)."""
        for name in ("max_iters", "batch_size", "grad_accum", "log_interval"):
            _check_int(name, getattr(self, name), 1)
        for name in ("warmup_iters", "eval_interval", "checkpoint_interval"):
            _check_int(name, getattr(self, name), 0)
        _check_int("eval_iters", self.eval_iters, 0, _MAX_EVAL_ITERS)  # one tensor of that many losses per split
        _check_int("seed", self.seed, 0, 2**62 - 1)  # generators take seed + rank + offsets in int64
        if self.lr_decay_iters is not None:
            _check_int("lr_decay_iters", self.lr_decay_iters, 1)
        if self.early_stopping_patience is not None:
            _check_int("early_stopping_patience", self.early_stopping_patience, 1)
        if self.eval_interval and self.eval_iters < 1:
            raise ValueError("eval_iters must be >= 1 when eval_interval > 0 (or set eval_interval=0)")
        if not (_is_number(self.lr) and 0 < self.lr <= _MAX_LR):
            raise ValueError(f"lr (--lr) must be a number in (0, {_MAX_LR:g}], got {self.lr!r} (typical: 1e-3 small, "
                             "3e-4 larger)")
        if self.min_lr is not None and not (_is_number(self.min_lr) and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"min_lr (--min-lr) must be in [0, lr={self.lr}], got {self.min_lr}")
        for name in ("grad_clip", "weight_decay", "min_delta"):
            value = getattr(self, name)
            if not (_is_number(value) and value >= 0):
                raise ValueError(f"{name} (--{name.replace('_', '-')}) must be a finite number >= 0, got {value!r}")
        if self.lr * self.weight_decay >= 1:
            raise ValueError(f"weight_decay (--weight-decay) * lr must be < 1: each step multiplies the weights by "
                             f"1 - lr * weight_decay; got {self.weight_decay} * {self.lr} (typical weight_decay: 0.1)")
        for name in ("beta1", "beta2", "muon_momentum"):
            value = getattr(self, name)
            if not (_is_number(value) and 0 <= value < 1):
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        for name, allowed in (("schedule", SCHEDULES), ("optimizer", OPTIMIZERS), ("dtype", DTYPES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.early_stopping_patience is not None and not self.eval_interval:
            raise ValueError("early stopping needs evaluations: set eval_interval > 0")
        if self.max_time_s is not None and not (_is_number(self.max_time_s) and self.max_time_s > 0):
            raise ValueError(f"max_time_s (--max-time) must be a finite number > 0 or None, got {self.max_time_s}")

    @property
    def min_lr_value(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

    @property
    def decay_iters(self) -> int:
        return self.max_iters if self.lr_decay_iters is None else self.lr_decay_iters

    def lr_at(self, step: int) -> float:
        """Learning rate used for optimizer step `step` (0-based)."""
        return lr_at(step, lr=self.lr, min_lr=self.min_lr_value, warmup_iters=self.warmup_iters,
                     decay_iters=self.decay_iters, schedule=self.schedule)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_MAX_STEPS = 2**40  # larger counts are typos; they would also overflow int64 token counters
_MAX_EVAL_ITERS = 10_000  # batches per split per evaluation (nanoGPT uses 200)
_MAX_LR = 10.0  # larger rates only diverge; past float32's range the optimizer itself fails


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(name: str, value: Any, low: int, high: int = _MAX_STEPS) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        flag = "--patience" if name == "early_stopping_patience" else "--" + name.replace("_", "-")
        raise ValueError(f"TrainConfig.{name} ({flag}) must be an integer in [{low}, {high}], got {value!r}")


@dataclass
class TrainEvent:
    """What the callback receives. `kind`: "step" (every optimizer step), "eval", or "end"."""

    kind: str
    step: int  # optimizer steps done
    metrics: dict[str, Any]  # loss, lr, grad_norm for "step"; the eval row for "eval"
    history: History
    trainer: Trainer = field(repr=False)

    @property
    def model(self) -> nn.Module:
        return self.trainer.model

    @property
    def is_main(self) -> bool:
        """True on rank 0 (always, without DDP). Under DDP the callback runs on every rank."""
        return self.trainer.dist.rank == 0


@dataclass
class EarlyStopping:
    """Stop after `patience` evaluations in a row that do not beat the best val loss by > `min_delta`."""

    patience: int | None = None  # None = never stop early (the best loss is still tracked)
    min_delta: float = 0.0
    best: float | None = None  # best val loss so far
    bad_evals: int = 0  # evaluations since the last improvement

    def update(self, val_loss: float) -> bool:
        """Record one evaluation; True if it improved on the best."""
        improved = self.best is None or val_loss < self.best - self.min_delta
        if improved:
            self.best, self.bad_evals = val_loss, 0
        else:
            self.bad_evals += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_evals >= self.patience


# ---------------------------------------------------------------------------- pieces


def configure_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> Any:
    """AdamW with weight decay on tensors of dim >= 2 (matmul weights, embeddings) and none on biases
    and norm gains, as in nanoGPT: decaying a gain or bias toward 0 only fights the normalisation.

    With ``config.optimizer == "muon"`` the hidden weight matrices go to Muon instead and the rest
    stays with AdamW, in one :class:`minigpt.optim.MuonAdamW` (a model without hidden matrices,
    such as the bigram baseline, gets plain AdamW).
    """
    if config.optimizer == "muon":
        matrices, params = split_muon_params(model)
    else:
        matrices, params = [], [p for p in model.parameters() if p.requires_grad]  # a tied one once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # the fused kernel does the whole update in one pass (on CPU since torch 2.4); measured here on a
    # 2-core CPU it halves the optimizer's share of a step against the default foreach version
    fused = config.fused if config.fused is not None else device.type in ("cuda", "cpu")
    kwargs = {"fused": True} if fused else {}
    adamw = torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), **kwargs)
    if not matrices:
        return adamw
    muon = Muon(matrices, lr=config.lr, momentum=config.muon_momentum, weight_decay=config.weight_decay)
    return MuonAdamW(adamw, muon)


class LMBatches:
    """`get_batch(split, generator)` for a language model over two 1-D token tensors.

    Each call samples one split with `minigpt.data.get_batch`. `train_tokens` and `block_size` let
    `plan_run` turn epochs into steps.
    """

    def __init__(self, train_data: torch.Tensor, val_data: torch.Tensor, block_size: int, batch_size: int):
        check_length(len(train_data), block_size)
        check_length(len(val_data), block_size)
        self.splits = {"train": train_data, "val": val_data}
        self.block_size, self.batch_size = block_size, batch_size
        self.train_tokens = len(train_data)

    def __call__(self, split: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return sample_split(self.splits[split], self.block_size, self.batch_size, generator=generator)


def lm_batches(train_data: torch.Tensor, val_data: torch.Tensor, block_size: int, batch_size: int) -> LMBatches:
    """`get_batch(split, generator)` for a language model over two 1-D token tensors."""
    return LMBatches(train_data, val_data, block_size, batch_size)


# ---------------------------------------------------------------------------- run planning


def measure_steps_per_second(
    model: nn.Module, get_batch: BatchFn, config: TrainConfig, steps: int = 8, min_seconds: float = 1.0
) -> float:
    """Optimizer steps per second of this model, batch and optimizer here, timed on a throwaway copy
    over at least `steps` steps and `min_seconds` seconds (a handful of steps is too noisy to plan by)."""
    device = get_device(config.device)
    m = copy.deepcopy(unwrap_model(model)).to(device).train()
    opt = configure_optimizer(m, config, device)
    dtype = autocast_dtype(device, None if config.dtype == "auto" else config.dtype)
    g = torch.Generator().manual_seed(0)

    def one_step() -> None:
        for _ in range(config.grad_accum):
            batch = [t.to(device) for t in get_batch("train", g)]
            with autocast(device, dtype):
                _, loss = m(*batch)
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):  # the first steps allocate buffers and pick kernels
        one_step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    done, t0 = 0, time.perf_counter()
    while done < steps or time.perf_counter() - t0 < min_seconds:
        one_step()
        done += 1
        if done % 4 == 0:
            sync()
    sync()
    return done / (time.perf_counter() - t0)


def fit_to_budget(model: nn.Module, get_batch: BatchFn, config: TrainConfig) -> tuple[TrainConfig, float]:
    """A copy of `config` whose max_iters makes warmup + decay end when `config.max_time_s` does.

    A schedule cut off by the clock halfway never reaches its low learning rate, and the last,
    low-rate steps are where the loss drops most; so a timed run plans its steps from the speed
    measured here and now. Returns (config, measured steps per second). Evaluations cost about
    2 * eval_iters forward passes of ~1/3 of a step each; the trainer evaluates before the first
    step and after the last one as well.
    """
    if not config.max_time_s:
        raise ValueError("fit_to_budget needs config.max_time_s (the budget in seconds)")
    sps = measure_steps_per_second(model, get_batch, config)
    eval_cost = 2 * config.eval_iters / 3  # in steps, per evaluation
    per_step = 1 + (eval_cost / config.eval_interval if config.eval_interval else 0)
    budget_steps = (config.max_time_s * sps - (2 * eval_cost if config.eval_interval else 0)) / per_step
    n = max(10, int(0.9 * budget_steps))  # a margin: a run the clock cuts short never finishes its decay
    fitted = dataclasses.replace(config, max_iters=n, lr_decay_iters=None,
                                 warmup_iters=min(config.warmup_iters, n // 10))
    return fitted, sps


@dataclass
class RunPlan:
    """What `plan_run` decided: the config to train with, and why."""

    config: TrainConfig
    steps_per_s: float | None = None  # measured speed, when the steps were fitted to max_time_s
    notes: list[str] = field(default_factory=list)  # one line per change made to the config


def plan_run(
    config: TrainConfig,
    get_batch: BatchFn | None = None,
    model: nn.Module | None = None,
    *,
    epochs: float | None = None,
    fit_time: bool = False,
    train_tokens: int | None = None,
    block_size: int | None = None,
) -> RunPlan:
    """Turn what was asked for (epochs, a time budget) into the step counts the trainer runs.

    1. `epochs`: max_iters = ceil(epochs * train tokens / tokens per step), at least 1 (tokens per
       step = batch_size * block_size * grad_accum; sizes from an `LMBatches`, else passed/config).
    2. Clamps: the decay ends by max_iters; a warmup as long as the run shrinks to max_iters // 10.
    3. `fit_time` with `config.max_time_s`: max_iters from the measured speed (`fit_to_budget`), so
       the decay ends when the budget does. Not under torchrun (ranks timing themselves could plan
       different step counts and deadlock) nor with `compile` (the first steps compile).
    """
    notes: list[str] = []
    if epochs is not None:
        train_tokens = train_tokens if train_tokens is not None else getattr(get_batch, "train_tokens", None)
        block_size = block_size if block_size is not None else getattr(get_batch, "block_size", None)
        if train_tokens is None or block_size is None:
            raise ValueError("epochs need the data size: pass train_tokens= and block_size= (or use lm_batches)")
        batch_size = getattr(get_batch, "batch_size", config.batch_size)  # what get_batch really draws
        per_step = batch_size * block_size * config.grad_accum
        steps = max(1, math.ceil(epochs * train_tokens / per_step))
        config = dataclasses.replace(config, max_iters=steps)
        notes.append(f"{epochs:g} epochs of {train_tokens:,} tokens = {steps} steps of {per_step:,} tokens")
    if config.lr_decay_iters is not None and config.lr_decay_iters > config.max_iters:
        notes.append(f"lr_decay_iters {config.lr_decay_iters} clamped to max_iters = {config.max_iters}")
        config = dataclasses.replace(config, lr_decay_iters=config.max_iters)
    if config.warmup_iters >= config.max_iters:
        config = dataclasses.replace(config, warmup_iters=config.max_iters // 10)
        notes.append(f"warmup shortened to {config.warmup_iters} steps (the run has {config.max_iters})")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not (fit_time and config.max_time_s and not config.compile and not distributed):
        return RunPlan(config, None, notes)
    if model is None or get_batch is None:
        raise ValueError("fitting the steps to max_time_s measures the speed: pass get_batch and model")
    asked_warmup = config.warmup_iters
    config, sps = fit_to_budget(model, get_batch, config)
    if config.warmup_iters != asked_warmup:
        notes.append(f"warmup shortened from {asked_warmup} to {config.warmup_iters} steps (a tenth of the "
                     "planned run)")
    notes.append(f"schedule: {sps:.1f} steps/s measured, so {config.max_iters} steps fit the "
                 f"{config.max_time_s:g} s budget")
    return RunPlan(config, sps, notes)


# ---------------------------------------------------------------------------- trainer


class Trainer:
    """Train `model` on batches from `get_batch`; `fit()` is the loop (see the module docstring).

    model: any nn.Module with `forward(*inputs, targets) -> (logits, loss)`.
    get_batch: `get_batch(split, generator) -> tuple of tensors`, targets last.
    tokenizer, metadata: stored in checkpoints (tokenizer via its to_dict()).
    callback: `callback(TrainEvent) -> bool | None`; returning True stops training (status "stopped").
    resume: continue from `latest_checkpoint(out_dir)` if there is one.
    overwrite: replace a run already in out_dir (without it, or resume, such a folder is refused).
    The output folder is checked here, before any work: a file, a symlink loop or a read-only
    folder raises CheckpointError at construction, not at the first save.
    """

    def __init__(
        self,
        model: nn.Module,
        get_batch: BatchFn,
        config: TrainConfig | None = None,
        *,
        tokenizer: Any = None,
        callback: Callable[[TrainEvent], bool | None] | None = None,
        resume: bool = False,
        metadata: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not callable(get_batch):
            raise TypeError("get_batch must be a callable get_batch(split, generator) -> tuple of tensors")
        self.config = cfg = config or TrainConfig()
        self.get_batch, self.tokenizer, self.callback = get_batch, tokenizer, callback
        self.resume, self.metadata = resume, dict(metadata or {})
        self.out_dir = Path(cfg.out_dir) if cfg.out_dir is not None else None
        self.dist = setup_distributed(cfg.device)
        self.device, self.dtype, self.model, self.train_model = place_model(model, cfg, self.dist)
        self._check_out_dir(overwrite)
        self.optimizer = configure_optimizer(self.model, cfg, self.device)
        self.scaler = make_grad_scaler(self.device, self.dtype)
        self.generator = torch.Generator().manual_seed(cfg.seed + self.dist.rank)
        self.history = History()
        self.progress = ProgressLog(cfg.progress and self.is_main)
        self.early_stopping = EarlyStopping(cfg.early_stopping_patience, cfg.min_delta)
        self.guard = NanGuard(scaled=self.scaler.is_enabled())
        self.step = 0
        self.tokens_seen = 0
        self._elapsed_before = 0.0  # seconds spent in earlier (resumed) runs
        self._t0 = time.perf_counter()
        self._last_saved_step = -1
        self._last_eval_step = -1
        self._stop_request = False
        self.signals = StopSignals()  # SIGINT/SIGTERM during fit(); `.exit_code` is 130/143 after one

    def _check_out_dir(self, overwrite: bool) -> None:
        """Rank 0 checks (and with `overwrite` empties) out_dir; every rank raises together if it is refused."""
        error = None
        if self.out_dir is not None and self.is_main:
            try:
                prepare_out_dir(self.out_dir, resume=self.resume, overwrite=overwrite)
            except CheckpointError as e:
                error = e
        if any_rank(self.dist, self.device, error is not None)[0]:
            raise error or CheckpointError(f"rank 0 refused the output folder {self.out_dir}")

    # -- the loop

    def fit(self) -> History:
        """Train until a stop condition; returns the History (`.status` says why it stopped)."""
        cfg = self.config
        resumed = resume_or_seed(self)  # from out_dir's latest checkpoint, else from the seed
        self._start()
        status = "completed"
        # Ctrl-C / SIGTERM only set a flag: the step in progress finishes, then the loop saves and stops
        with self.signals:
            resumed = resume_or_seed(self)  # from out_dir's latest checkpoint, else from the seed
            self._start()
            status = "completed"
            try:
                if cfg.eval_interval and self.step == 0 and not resumed:
                    self._evaluate_and_save()  # the loss before training: about ln(vocab size)
                while self.step < cfg.max_iters:
                    lr = self._set_lr()  # a pure function of the step (warmup, then decay)
                    loss_sum, tokens = torch.zeros((), device=self.device), 0
                    for micro in range(cfg.grad_accum):  # gradients of the micro-batches add up
                        batch = self._fetch("train", self.generator)  # (inputs..., targets) on the device
                        with self._grad_sync(last=micro == cfg.grad_accum - 1):
                            loss = self._forward_loss(self.train_model, batch)  # forward under autocast
                            self.scaler.scale(loss / cfg.grad_accum).backward()  # so the sum is the mean
                        loss_sum += loss.detach().float()
                        tokens += batch[-1].numel() * self.dist.world_size
                    grad_norm = self._clip_gradients()
                    loss_v, norm_v = self._check_finite(loss_sum / cfg.grad_accum, grad_norm, lr)  # NaN guard
                    self.scaler.step(self.optimizer)  # optimizer.step(), unless fp16 overflowed
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.step += 1
                    self.tokens_seen += tokens
                    self._log_step(loss_v, lr, norm_v)
                    stop = self._evaluate_save_or_stop()
                    if stop:
                        status = stop
                        break
                self._finish(status)
            except KeyboardInterrupt:  # only where no handler could be installed (not the main thread)
                status = "interrupted"
                self._save_on_interrupt()
            finally:
                self.progress.close()
        return self._close_history(status)

    def _set_lr(self) -> float:
        lr = self.config.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _grad_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """DDP all-reduces gradients in backward; before the last micro-batch that is wasted work."""
        ddp = self.train_model
        if last or not isinstance(ddp, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return ddp.no_sync()

    def _clip_gradients(self) -> torch.Tensor:
        """Clip the global gradient norm (if grad_clip > 0) and return the norm before clipping."""
        self.scaler.unscale_(self.optimizer)  # no-op unless fp16: clip the true gradients
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.config.grad_clip > 0:
            return torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        return torch.nn.utils.get_total_norm([g for p in params if (g := p.grad) is not None])

    def _check_finite(self, loss: torch.Tensor, grad_norm: torch.Tensor, lr: float) -> tuple[float, float]:
        """NaN/Inf guard, agreed by every rank; returns loss and norm as numbers."""
        loss_v, norm_v = loss.item(), float(grad_norm)  # one sync per step, needed by the guard
        if any_rank(self.dist, self.device, self.guard.diverged(loss_v, norm_v))[0]:
            self.optimizer.zero_grad(set_to_none=True)
            raise record_divergence(self, loss_v, norm_v, lr)
        return loss_v, norm_v

    def _log_step(self, loss: float, lr: float, grad_norm: float) -> None:
        """Progress bar; a history row every `log_interval` steps; the callback's "step" event."""
        cfg = self.config
        self.progress.advance()
        if self.step % cfg.log_interval == 0 or self.step == cfg.max_iters:
            tps = self.progress.throughput(self.tokens_seen)
            loss_all = all_mean(self.dist, torch.tensor(loss, device=self.device)).item()
            self.history.append(step=self.step, event="step", train_loss=loss_all, lr=lr, grad_norm=grad_norm,
                                tokens_seen=self.tokens_seen, elapsed=self.elapsed, tokens_per_s=tps)
            self.progress.show(loss_all, lr, tps)
        if self._emit("step", {"loss": loss, "lr": lr, "grad_norm": grad_norm}):
            self._stop_request = True

    def _evaluate_save_or_stop(self) -> str | None:
        """Evaluate and save when due; the reason to stop now (the same on every rank), or None."""
        cfg = self.config
        stop_early = False
        if cfg.eval_interval and self.step % cfg.eval_interval == 0:
            stop_early = self._evaluate_and_save()
        if cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0:
            self.save(LATEST_DIR)
        out_of_time = cfg.max_time_s is not None and self.elapsed >= cfg.max_time_s
        stopped, out_of_time, signalled = any_rank(self.dist, self.device, self._stop_request, out_of_time,
                                                   self.signals.requested)
        if signalled:
            return "interrupted"
        if stop_early:
            return "early_stopped"
        return "time_limit" if out_of_time else "stopped" if stopped else None

    # -- start and end of a run

    def _start(self) -> None:
        self.model.train()
        self._t0 = time.perf_counter()
        self._stop_request = False
        self._last_eval_step = max((r["step"] for r in self.history.evals), default=-1)
        self.progress.open(self.config.max_iters, self.step, self.tokens_seen)

    def _finish(self, status: str) -> None:
        if status == "interrupted":  # at a step boundary: save now, evaluate in the resumed run
            self._save_on_interrupt()
            return
        if self.config.eval_interval and self._last_eval_step != self.step:
            self._evaluate_and_save()  # a final measurement for every run that evaluates
        if self._last_saved_step != self.step:
            self.save(LATEST_DIR)

    def _save_on_interrupt(self) -> None:
        if self.signals.signum is None:
            self.signals.signum = signal.SIGINT  # a KeyboardInterrupt raised the usual way
        self.progress.say(f"interrupted at step {self.step}; saving a checkpoint")
        try:
            self.save(LATEST_DIR)
        except TrainingDiverged as e:  # never save NaN weights, even when asked to stop
            log.warning("%s", e)

    def _close_history(self, status: str) -> History:
        self.history.append(step=self.step, event=status, tokens_seen=self.tokens_seen, elapsed=self.elapsed,
                            val_loss=self.history.last_val_loss)
        self.history.status = status
        self._write_history()
        self._emit("end", {"status": status})
        return self.history

    # -- evaluation

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss per split over `eval_iters` batches; the same batches every call (fixed seed)."""
        cfg = self.config
        was_training = self.model.training
        self.model.eval()
        out = {}
        try:
            for split in ("train", "val"):
                g = torch.Generator().manual_seed(cfg.seed + _EVAL_SEED_OFFSET + self.dist.rank)
                losses = torch.zeros(cfg.eval_iters, device=self.device)
                for i in range(cfg.eval_iters):
                    losses[i] = self._forward_loss(self.model, self._fetch(split, g)).float()
                out[split] = all_mean(self.dist, losses.mean()).item()
        finally:
            self.model.train(was_training)
        return out

    def _evaluate_and_save(self) -> bool:
        """Evaluate, record, save best/ (and ckpt/ when checkpoint_interval is 0); True = stop early."""
        cfg = self.config
        losses = self.evaluate()
        val = losses["val"]
        improved = self.early_stopping.update(val)
        self._last_eval_step = self.step
        row = self.history.append(
            step=self.step, event="eval", train_loss=losses["train"], val_loss=val,
            val_ppl=math.exp(min(val, 700.0)), lr=cfg.lr_at(self.step - 1) if self.step else None,
            tokens_seen=self.tokens_seen, elapsed=self.elapsed,
        )
        self.progress.say(f"step {self.step}: train loss {losses['train']:.4f}, val loss {val:.4f} "
                          f"(ppl {row['val_ppl']:.2f}){' *' if improved else ''}")
        if improved and self.step > 0:
            self.save(BEST_DIR)
        if cfg.checkpoint_interval == 0 and self.step > 0:
            self.save(LATEST_DIR)
        if self._emit("eval", row):
            self._stop_request = True
        return self.early_stopping.should_stop

    # -- checkpoints: ckpt/ (latest, with training state) and best/ (weights of the best val loss)

    def save(self, which: str = LATEST_DIR) -> Path | None:
        """Write `out_dir/ckpt` (with training state) or `out_dir/best` (weights only); see `save_run`.

        Collective under DDP (every rank must call it); rank 0 writes. Refuses non-finite weights,
        so a diverging run never replaces a good checkpoint.
        """
        return save_run(self, which)

    def _write_history(self) -> None:
        if self.out_dir is None or not self.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.history.to_csv(self.out_dir / "history.csv")
        self.history.to_json(self.out_dir / "history.json")

    # -- small helpers

    @property
    def is_main(self) -> bool:
        return self.dist.rank == 0

    @property
    def elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._t0

    @property
    def best_val_loss(self) -> float | None:
        return self.early_stopping.best

    @property
    def evals_without_improvement(self) -> int:
        return self.early_stopping.bad_evals

    def _fetch(self, split: str, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """One batch from get_batch, moved to the device (the only place batches move)."""
        batch = self.get_batch(split, generator)
        if isinstance(batch, torch.Tensor) or not isinstance(batch, list | tuple) or len(batch) < 2:
            raise TypeError(
                f"get_batch({split!r}, generator) must return a tuple of tensors with the targets last, "
                f"e.g. (x, y); got {type(batch).__name__}"
            )
        return tuple(t.to(self.device, non_blocking=True) for t in batch)

    def _forward_loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        with autocast(self.device, self.dtype):
            out = model(*batch)
        loss = out[1] if isinstance(out, tuple | list) and len(out) >= 2 else None
        if loss is None:
            raise TypeError(
                f"{type(self.model).__name__}(*batch) must return (logits, loss) with a loss; the trainer "
                "passes the targets as the last element of the batch"
            )
        return loss

    def _emit(self, kind: str, metrics: dict[str, Any]) -> bool:
        if self.callback is None:
            return False
        return bool(self.callback(TrainEvent(kind, self.step, metrics, self.history, self)))

    def close(self) -> None:
        """Leave the process group if this trainer created it (the DDP wrapper goes first)."""
        if self.dist.enabled:
            self.train_model = self.model  # DDP's reducer holds the group: free it while the group is alive
            gc.collect()
        cleanup_distributed(self.dist)


def train(
    model: nn.Module,
    get_batch: BatchFn,
    config: TrainConfig | None = None,
    *,
    tokenizer: Any = None,
    callback: Callable[[TrainEvent], bool | None] | None = None,
    resume: bool = False,
    metadata: dict[str, Any] | None = None,
    epochs: float | None = None,
    fit_time: bool = False,
    overwrite: bool = False,
    **overrides: Any,
) -> History:
    """One call for notebooks: `train(model, get_batch, max_iters=500, lr=1e-3)`.

    Keyword overrides replace fields of `config` (or of a default TrainConfig). `epochs` (instead of
    max_iters) and `fit_time=True` (plan max_iters from the measured speed so the decay ends with
    max_time_s) go through `plan_run`, the same planning as `minigpt train`. As with `minigpt train`:
    an out_dir holding another run is refused unless `resume=True` or `overwrite=True`, and
    `resume=True` without `config` continues the saved run's plan (steps, schedule, budget; see
    `RESUMED_FIELDS`) where no keyword says otherwise.
    """
    if resume and config is None:
        config = _saved_plan(overrides.get("out_dir", TrainConfig.out_dir))
    config = dataclasses.replace(config or TrainConfig(), **overrides)
    if epochs is not None or fit_time:
        config = plan_run(config, get_batch, model, epochs=epochs, fit_time=fit_time and not resume).config
    trainer = Trainer(model, get_batch, config, tokenizer=tokenizer, callback=callback, resume=resume,
                      metadata=metadata, overwrite=overwrite)
    try:
        return trainer.fit()
    finally:
        trainer.close()


def _saved_plan(out_dir: str | os.PathLike | None) -> TrainConfig | None:
    """The TrainConfig of the run saved in out_dir (its `RESUMED_FIELDS`), or None if there is none."""
    ckpt = latest_checkpoint(out_dir) if out_dir is not None else None
    if ckpt is None:
        return None
    saved = read_meta(ckpt).get("train_config") or {}
    return TrainConfig(**{k: v for k, v in saved.items() if k in RESUMED_FIELDS})
