"""One model-agnostic trainer for every model of the course (GPT, encoder-decoder, baselines).

The loop, one optimizer step at a time (nanoGPT's recipe, made importable and testable):

1. set the learning rate of step `s` from a pure function of `s` (warmup, then cosine/linear/
   constant; see `minigpt.schedule`), so resuming at step k needs no scheduler state;
2. for each of `grad_accum` micro-batches: `batch = get_batch("train", generator)`, a tuple of
   tensors moved to the device here and nowhere else; `logits, loss = model(*batch)` under
   autocast (the LAST element of the batch is the targets: `(x, y)` for a language model,
   `(src, tgt_in, targets)` for the encoder-decoder); backward of `loss / grad_accum`, so the
   accumulated gradient is the mean over all micro-batches. Under DDP the all-reduce runs only on
   the last micro-batch (`no_sync()` on the others);
3. unscale (fp16 only), clip the gradient norm, check that loss and grad norm are finite (NaN/Inf
   guard: stop BEFORE the optimizer step writes bad numbers into the weights), AdamW step;
4. every `eval_interval` steps: mean train/val loss over `eval_iters` fixed batches (the same
   batches at every evaluation, so the curve moves only because the model does), early stopping
   on val loss, `out_dir/best/` when val loss improves, `out_dir/ckpt/` for resuming;
5. stop at `max_iters`, at `max_time_s` of wall-clock time, on early stopping, when the callback
   returns True, or on Ctrl-C (a checkpoint is saved and `fit` returns normally).

`fit()` returns a `History` (rows of step, train/val loss, lr, grad norm, tokens seen, elapsed);
its `status` says why training stopped. Divergence raises `TrainingDiverged` (with the history
attached) and never overwrites a good checkpoint.

Data: `get_batch(split, generator) -> tuple[Tensor, ...]` with split "train" or "val". The
trainer owns the generators (seeded `seed + rank`), saves their state in checkpoints, and so
resumes on exactly the batches a straight run would have drawn. `lm_batches` builds such a
function from token tensors.

Distributed: launch the same script with `torchrun --nproc_per_node=K`. The trainer reads RANK /
WORLD_SIZE / LOCAL_RANK, joins the process group (nccl on CUDA, gloo on CPU), wraps the model in
DistributedDataParallel, samples data per rank, and logs and writes files on rank 0 only.
`grad_accum` is per rank: one optimizer step sees `batch * grad_accum * world_size` sequences.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import (
    BEST_DIR,
    LATEST_DIR,
    atomic_write_bytes,
    latest_checkpoint,
    load_checkpoint,
    load_train_state,
    save_checkpoint,
    unwrap_model,
)
from .optim import Muon, MuonAdamW, split_muon_params
from .schedule import SCHEDULES, lr_at

__all__ = [
    "DistInfo",
    "History",
    "TrainConfig",
    "TrainEvent",
    "Trainer",
    "TrainingDiverged",
    "cleanup_distributed",
    "configure_optimizer",
    "fit_to_budget",
    "lm_batches",
    "measure_steps_per_second",
    "setup_distributed",
    "train",
]

log = logging.getLogger(__name__)

GetBatch = Callable[[str, torch.Generator], Sequence[torch.Tensor]]
DTYPES = ("auto", "float32", "bfloat16", "float16")
OPTIMIZERS = ("adamw", "muon")
STATUSES = ("running", "completed", "time_limit", "early_stopped", "stopped", "interrupted", "diverged")
COLUMNS = ("step", "event", "train_loss", "val_loss", "val_ppl", "lr", "grad_norm", "tokens_seen",
           "elapsed", "tokens_per_s")
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
        positive = ("max_iters", "batch_size", "grad_accum", "log_interval")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        for name in ("warmup_iters", "eval_interval", "eval_iters", "checkpoint_interval"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"TrainConfig.{name} must be an integer >= 0, got {value!r}")
        if self.eval_interval and self.eval_iters < 1:
            raise ValueError("eval_iters must be >= 1 when eval_interval > 0 (or set eval_interval=0)")
        if not (isinstance(self.lr, int | float) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r} (typical: 1e-3 small, 3e-4 larger)")
        if self.min_lr is not None and not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not 0 <= self.muon_momentum < 1:
            raise ValueError(f"muon_momentum must be in [0, 1), got {self.muon_momentum}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("grad_clip and weight_decay must be >= 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"beta1/beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError("early_stopping_patience must be >= 1 or None")
        if self.early_stopping_patience is not None and not self.eval_interval:
            raise ValueError("early stopping needs evaluations: set eval_interval > 0")
        if self.max_time_s is not None and self.max_time_s <= 0:
            raise ValueError(f"max_time_s must be > 0 or None, got {self.max_time_s}")

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


class TrainingDiverged(FloatingPointError):
    """Loss or gradient became NaN/Inf. `.history` holds the rows up to that point."""

    def __init__(self, message: str, *, step: int, history: History | None = None):
        super().__init__(message)
        self.step = step
        self.history = history


# ---------------------------------------------------------------------------- history


class History:
    """Training rows as data. One row per `log_interval` steps (event "step"), per evaluation
    (event "eval": train_loss/val_loss are means over `eval_iters` batches), and a final row whose
    event is the stop status. Columns: `COLUMNS`.
    """

    def __init__(self, rows: list[dict[str, Any]] | None = None, status: str = "running"):
        self.rows: list[dict[str, Any]] = [dict(r) for r in rows or []]
        self.status = status

    def append(self, **row: Any) -> dict[str, Any]:
        full = {c: row.get(c) for c in COLUMNS}
        self.rows.append(full)
        return full

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]

    def __repr__(self) -> str:
        best = self.best_val_loss
        tail = f", best val loss {best:.4f} at step {self.best_step}" if best is not None else ""
        return f"History({len(self.rows)} rows, status={self.status!r}{tail})"

    @property
    def evals(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["event"] == "eval"]

    @property
    def steps(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["event"] == "step"]

    def column(self, name: str, event: str | None = None) -> list[Any]:
        return [r[name] for r in self.rows if event is None or r["event"] == event]

    @property
    def best_val_loss(self) -> float | None:
        vals = [r["val_loss"] for r in self.evals if r["val_loss"] is not None]
        return min(vals) if vals else None

    @property
    def best_step(self) -> int | None:
        evals = [r for r in self.evals if r["val_loss"] is not None]
        return min(evals, key=lambda r: r["val_loss"])["step"] if evals else None

    @property
    def last_val_loss(self) -> float | None:
        evals = self.evals
        return evals[-1]["val_loss"] if evals else None

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "rows": [dict(r) for r in self.rows]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        return cls(d.get("rows", []), d.get("status", "running"))

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            atomic_write_bytes(path, text.encode())
        return text

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in COLUMNS})
        if path is not None:
            atomic_write_bytes(path, buf.getvalue().encode())
        return buf.getvalue()

    def plot(self, ax: Any = None, *, log_y: bool = False) -> Any:
        """Loss curves on a matplotlib Axes (created if None); returns the Axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(7, 4))
        steps = self.steps
        if steps:
            ax.plot([r["step"] for r in steps], [r["train_loss"] for r in steps],
                    alpha=0.35, lw=1, label="train (per step)")
        evals = [r for r in self.evals if r["val_loss"] is not None]
        if evals:
            x = [r["step"] for r in evals]
            ax.plot(x, [r["train_loss"] for r in evals], "o-", ms=3, label="train (eval)")
            ax.plot(x, [r["val_loss"] for r in evals], "o-", ms=3, label="val")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy loss")
        if log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        return ax


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


# ---------------------------------------------------------------------------- distributed


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # this process called init_process_group (and so tears it down)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK).

    Without WORLD_SIZE > 1 this does nothing. Backend: nccl when training on CUDA, else gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), local, dist.get_world_size(), owns_group=False)
    use_cuda = torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, local, world, owns_group=True)


def cleanup_distributed(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


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


def lm_batches(
    train_data: torch.Tensor, val_data: torch.Tensor, block_size: int, batch_size: int
) -> GetBatch:
    """`get_batch(split, generator)` for a language model over two 1-D token tensors."""
    from .data import check_length
    from .data import get_batch as sample

    check_length(len(train_data), block_size)
    check_length(len(val_data), block_size)
    splits = {"train": train_data, "val": val_data}

    def get_batch(split: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return sample(splits[split], block_size, batch_size, generator=generator)

    return get_batch


def measure_steps_per_second(
    model: nn.Module, get_batch: GetBatch, config: TrainConfig, steps: int = 8, min_seconds: float = 1.0
) -> float:
    """Optimizer steps per second of this model, batch and optimizer here, timed on a throwaway copy
    over at least `steps` steps and `min_seconds` seconds (a handful of steps is too noisy to plan by)."""
    import copy

    from .device import autocast, autocast_dtype, get_device

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


def fit_to_budget(model: nn.Module, get_batch: GetBatch, config: TrainConfig) -> tuple[TrainConfig, float]:
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


def _rng_state() -> dict[str, Any]:
    """Python/NumPy/torch RNG states as tensors and lists, so torch.load(weights_only=True) reads them."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {"python": [version, list(internal), gauss], "torch": torch.get_rng_state()}
    try:
        import numpy as np

        np_state = np.random.get_state(legacy=True)
        assert isinstance(np_state, tuple)  # legacy=True: the (name, keys, pos, has_gauss, cached) tuple
        name, keys, pos, has_gauss, cached = np_state
        state["numpy"] = [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
    except ImportError:
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _hint(dtype: torch.dtype | None, grad_clip: float, lr: float) -> str:
    hints = [f"the learning rate may be too high: lower lr (e.g. {lr / 3:.1e})"]
    hints.append("enable gradient clipping (grad_clip=1.0)" if not grad_clip else "")
    if dtype is torch.float16:
        hints.append("float16 can overflow: use dtype='bfloat16' (or 'float32')")
    return "; ".join(h for h in hints if h) + "."


# ---------------------------------------------------------------------------- trainer


class Trainer:
    """Train `model` on batches from `get_batch`; see the module docstring for the loop.

    model: any nn.Module with `forward(*inputs, targets) -> (logits, loss)`.
    get_batch: `get_batch(split, generator) -> tuple of tensors`, targets last.
    tokenizer, metadata: stored in checkpoints (tokenizer via its to_dict()).
    callback: `callback(TrainEvent) -> bool | None`; returning True stops training (status "stopped").
    resume: continue from `latest_checkpoint(out_dir)` if there is one.
    """

    def __init__(
        self,
        model: nn.Module,
        get_batch: GetBatch,
        config: TrainConfig | None = None,
        *,
        tokenizer: Any = None,
        callback: Callable[[TrainEvent], bool | None] | None = None,
        resume: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not callable(get_batch):
            raise TypeError("get_batch must be a callable get_batch(split, generator) -> tuple of tensors")
        from .device import autocast_dtype, get_device, make_grad_scaler

        self.config = config or TrainConfig()
        self.get_batch = get_batch
        self.tokenizer = tokenizer
        self.callback = callback
        self.resume = resume
        self.metadata = dict(metadata or {})
        cfg = self.config

        self.dist = setup_distributed(cfg.device)
        if self.dist.enabled and torch.cuda.is_available() and cfg.device in ("auto", "cuda"):
            self.device = torch.device(f"cuda:{self.dist.local_rank}")
        else:
            self.device = get_device(cfg.device)
        self.dtype = autocast_dtype(self.device, None if cfg.dtype == "auto" else cfg.dtype)  # None = fp32
        self.model = unwrap_model(model).to(self.device)  # the plain module: checkpoints, eval
        if cfg.compile:
            self.model.compile()  # in place: state_dict keys keep their names
        self.train_model: nn.Module = self.model  # what the training forward goes through
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DDP(self.model, device_ids=ids)
        self.optimizer = configure_optimizer(self.model, cfg, self.device)
        self.scaler = make_grad_scaler(self.device, self.dtype)
        self.generator = torch.Generator().manual_seed(cfg.seed + self.dist.rank)
        self.history = History()
        self.step = 0
        self.tokens_seen = 0
        self.best_val_loss: float | None = None
        self.evals_without_improvement = 0
        self._elapsed_before = 0.0  # seconds spent in earlier (resumed) runs
        self._t0 = time.perf_counter()
        self._skipped_steps = 0
        self._last_saved_step = -1
        self._stop_request = False
        self._pbar: Any = None
        self.out_dir = Path(cfg.out_dir) if cfg.out_dir is not None else None

    # -- small helpers

    @property
    def is_main(self) -> bool:
        return self.dist.rank == 0

    @property
    def elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._t0

    def _autocast(self) -> contextlib.AbstractContextManager:
        from .device import autocast

        return autocast(self.device, self.dtype)

    def _fetch(self, split: str, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        batch = self.get_batch(split, generator)
        if isinstance(batch, torch.Tensor) or not isinstance(batch, list | tuple) or len(batch) < 2:
            raise TypeError(
                f"get_batch({split!r}, generator) must return a tuple of tensors with the targets last, "
                f"e.g. (x, y); got {type(batch).__name__}"
            )
        return tuple(t.to(self.device, non_blocking=True) for t in batch)

    def _forward_loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        with self._autocast():
            out = model(*batch)
        loss = out[1] if isinstance(out, tuple | list) and len(out) >= 2 else None
        if loss is None:
            raise TypeError(
                f"{type(self.model).__name__}(*batch) must return (logits, loss) with a loss; the trainer "
                "passes the targets as the last element of the batch"
            )
        return loss

    def _all_mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.dist.enabled:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value /= self.dist.world_size
        return value

    def _any(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag OR-ed over all ranks, in one all-reduce (every rank then stops together)."""
        if not self.dist.enabled:
            return flags
        t = torch.tensor([float(f) for f in flags], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return tuple(bool(v) for v in t.tolist())

    def _weights_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())

    def _emit(self, kind: str, metrics: dict[str, Any]) -> bool:
        if self.callback is None:
            return False
        return bool(self.callback(TrainEvent(kind, self.step, metrics, self.history, self)))

    def _say(self, text: str) -> None:
        log.info(text)
        if self.config.progress and self.is_main:
            from tqdm.auto import tqdm

            tqdm.write(text)

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
                out[split] = self._all_mean(losses.mean()).item()
        finally:
            self.model.train(was_training)
        return out

    # -- checkpoints

    def _train_state(self) -> dict[str, Any]:
        data_rng: list[torch.Tensor] = [self.generator.get_state()]
        rng = [_rng_state()]
        if self.dist.enabled:  # every rank's streams, so a resumed DDP run draws the same data
            gathered: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(gathered, (self.generator.get_state(), _rng_state()))
            data_rng = [g[0] for g in gathered]
            rng = [g[1] for g in gathered]
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": rng,
            "data_rng": data_rng,
            "history": self.history.to_dict(),
            "best_val_loss": self.best_val_loss,
            "evals_without_improvement": self.evals_without_improvement,
            "tokens_seen": self.tokens_seen,
            "elapsed": self.elapsed,
            "world_size": self.dist.world_size,
        }

    def save(self, which: str = LATEST_DIR) -> Path | None:
        """Write `out_dir/ckpt` (with training state) or `out_dir/best` (weights only).

        Collective under DDP (every rank must call it); rank 0 writes. Refuses non-finite weights,
        so a diverging run never replaces a good checkpoint.
        """
        if self.out_dir is None:
            return None
        state = self._train_state() if which == LATEST_DIR else None
        finite = self._weights_finite()  # on every rank, so all of them raise together
        if which == LATEST_DIR:
            self._last_saved_step = self.step
        if not finite:
            raise TrainingDiverged(
                f"weights are NaN/Inf at step {self.step}; not saving over the last good checkpoint "
                f"in {self.out_dir}. " + _hint(self.dtype, self.config.grad_clip, self.config.lr),
                step=self.step, history=self.history,
            )
        if not self.is_main:
            return None
        path = save_checkpoint(
            self.out_dir / which, self.model, tokenizer=self.tokenizer, train_config=self.config,
            train_state=state, step=self.step, best_val_loss=self.best_val_loss, metadata=self.metadata,
        )
        self._write_history()
        return path

    def _write_history(self) -> None:
        if self.out_dir is None or not self.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.history.to_csv(self.out_dir / "history.csv")
        self.history.to_json(self.out_dir / "history.json")

    def _load(self, path: Path) -> None:
        _, info = load_checkpoint(path, device=self.device, model=self.model)
        state = load_train_state(path)
        saved = (info.train_config or {}).get("optimizer", "adamw")
        if saved != self.config.optimizer:
            raise ValueError(
                f"{path} was trained with optimizer={saved!r} but this run uses optimizer="
                f"{self.config.optimizer!r}; resume with optimizer={saved!r} (CLI: --optimizer {saved})"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.history = History.from_dict(state["history"])
        self.history.status = "running"
        self.best_val_loss = state["best_val_loss"]
        self.evals_without_improvement = int(state["evals_without_improvement"])
        self.tokens_seen = int(state["tokens_seen"])
        self._elapsed_before = float(state["elapsed"])
        self._last_saved_step = self.step
        rank = self.dist.rank
        if state.get("world_size", 1) == self.dist.world_size:
            self.generator.set_state(state["data_rng"][rank])
            _set_rng_state(state["rng"][rank])
        else:  # different number of processes: continue deterministically, but on new streams
            log.warning("checkpoint was written with world size %s, now %s: data order will differ",
                        state.get("world_size"), self.dist.world_size)
            self.generator.manual_seed(self.config.seed + rank + 7919 * self.step)
            torch.manual_seed(self.config.seed + rank + 7919 * self.step)

    # -- training

    def _train_step(self) -> dict[str, Any]:
        cfg = self.config
        lr = cfg.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        tokens = 0
        for micro in range(cfg.grad_accum):
            batch = self._fetch("train", self.generator)
            last = micro == cfg.grad_accum - 1
            # DDP all-reduces gradients in backward; on all but the last micro-batch that is wasted work
            ddp = self.train_model if isinstance(self.train_model, nn.parallel.DistributedDataParallel) else None
            sync = contextlib.nullcontext() if last or ddp is None else ddp.no_sync()
            with sync:
                loss = self._forward_loss(self.train_model, batch)
                self.scaler.scale(loss / cfg.grad_accum).backward()
            loss_sum += loss.detach().float()
            tokens += batch[-1].numel()
        self.scaler.unscale_(self.optimizer)  # no-op unless fp16: clip the true gradients
        params = [p for p in self.model.parameters() if p.grad is not None]
        if cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm([g for p in params if (g := p.grad) is not None])
        loss = loss_sum / cfg.grad_accum
        loss_v, norm_v = loss.item(), float(grad_norm)  # one sync per step, needed by the guard
        bad_loss = not math.isfinite(loss_v)
        bad_grad = not math.isfinite(norm_v)
        if self.scaler.is_enabled():
            # fp16: inf gradients are expected now and then; the scaler skips that step and lowers
            # the scale. Only a long run of skips means real overflow.
            self._skipped_steps = self._skipped_steps + 1 if bad_grad else 0
            bad_grad = self._skipped_steps > 20
        if self._any(bad_loss or bad_grad)[0]:
            self.optimizer.zero_grad(set_to_none=True)
            return {"diverged": True, "loss": loss_v, "grad_norm": norm_v, "lr": lr}
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.tokens_seen += tokens * self.dist.world_size
        return {"diverged": False, "loss": loss_v, "grad_norm": norm_v, "lr": lr,
                "tokens": tokens * self.dist.world_size}

    def _diverged(self, m: dict[str, Any]) -> TrainingDiverged:
        cfg = self.config
        self.history.append(step=self.step, event="diverged", train_loss=m["loss"], lr=m["lr"],
                            grad_norm=m["grad_norm"], tokens_seen=self.tokens_seen, elapsed=self.elapsed)
        self.history.status = "diverged"
        kept = latest_checkpoint(self.out_dir) if self.out_dir is not None else None
        where = f"The last good checkpoint is kept at {kept}." if kept else "No checkpoint was written."
        msg = (
            f"training diverged at step {self.step + 1}: loss={m['loss']}, grad norm={m['grad_norm']}, "
            f"lr={m['lr']:.3g}. The weights were not updated. Hints: "
            + _hint(self.dtype, cfg.grad_clip, m["lr"]) + " " + where
        )
        return TrainingDiverged(msg, step=self.step, history=self.history)

    def _eval_and_track(self) -> bool:
        """Evaluate, record, save best/ckpt; returns True if early stopping fires."""
        cfg = self.config
        losses = self.evaluate()
        val = losses["val"]
        improved = self.best_val_loss is None or val < self.best_val_loss - cfg.min_delta
        if improved:
            self.best_val_loss = val
            self.evals_without_improvement = 0
        else:
            self.evals_without_improvement += 1
        row = self.history.append(
            step=self.step, event="eval", train_loss=losses["train"], val_loss=val,
            val_ppl=math.exp(min(val, 700.0)), lr=cfg.lr_at(self.step - 1) if self.step else None,
            tokens_seen=self.tokens_seen, elapsed=self.elapsed,
        )
        self._say(f"step {self.step}: train loss {losses['train']:.4f}, val loss {val:.4f} "
                  f"(ppl {row['val_ppl']:.2f}){' *' if improved else ''}")
        if improved and self.step > 0:
            self.save(BEST_DIR)
        if cfg.checkpoint_interval == 0 and self.step > 0:
            self.save(LATEST_DIR)
        if self._emit("eval", row):
            self._stop_request = True
        patience = cfg.early_stopping_patience
        return patience is not None and self.evals_without_improvement >= patience

    def fit(self) -> History:
        """Train until a stop condition; returns the History (`.status` says why it stopped)."""
        cfg = self.config
        resumed = False
        if self.resume and self.out_dir is not None:
            ckpt = latest_checkpoint(self.out_dir)
            if ckpt is not None:
                self._load(ckpt)
                resumed = True
                self._say(f"resumed from {ckpt} at step {self.step}")
            else:
                self._say(f"no checkpoint in {self.out_dir}; starting from scratch")
        if not resumed:
            random.seed(cfg.seed + self.dist.rank)
            torch.manual_seed(cfg.seed + self.dist.rank)
        self.model.train()
        self._t0 = time.perf_counter()
        self._stop_request = False
        status = "completed"
        from tqdm.auto import tqdm

        self._pbar = tqdm(total=cfg.max_iters, initial=self.step, desc="train", dynamic_ncols=True,
                          disable=not (cfg.progress and self.is_main))
        last_eval_step = max((r["step"] for r in self.history.evals), default=-1)
        t_log, tok_log = time.perf_counter(), self.tokens_seen
        try:
            if cfg.eval_interval and self.step == 0 and not resumed:
                self._eval_and_track()
                last_eval_step = 0
            while self.step < cfg.max_iters:
                m = self._train_step()
                if m["diverged"]:
                    status = "diverged"
                    raise self._diverged(m)
                self.step += 1
                self._pbar.update(1)
                if self.step % cfg.log_interval == 0 or self.step == cfg.max_iters:
                    now = time.perf_counter()
                    tps = (self.tokens_seen - tok_log) / max(now - t_log, 1e-9)
                    t_log, tok_log = now, self.tokens_seen
                    loss_all = self._all_mean(torch.tensor(m["loss"], device=self.device)).item()
                    self.history.append(step=self.step, event="step", train_loss=loss_all, lr=m["lr"],
                                        grad_norm=m["grad_norm"], tokens_seen=self.tokens_seen,
                                        elapsed=self.elapsed, tokens_per_s=tps)
                    self._pbar.set_postfix(loss=f"{loss_all:.4f}", lr=f"{m['lr']:.2e}", tok_s=f"{tps:,.0f}",
                                           refresh=False)
                if self._emit("step", {k: m[k] for k in ("loss", "lr", "grad_norm")}):
                    self._stop_request = True
                stop_early = False
                if cfg.eval_interval and self.step % cfg.eval_interval == 0:
                    stop_early = self._eval_and_track()
                    last_eval_step = self.step
                if cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0:
                    self.save(LATEST_DIR)
                out_of_time = cfg.max_time_s is not None and self.elapsed >= cfg.max_time_s
                stop_cb = self._stop_request
                stop_cb, out_of_time = self._any(stop_cb, out_of_time)
                if stop_early or out_of_time or stop_cb:
                    status = "early_stopped" if stop_early else "time_limit" if out_of_time else "stopped"
                    break
            if cfg.eval_interval and last_eval_step != self.step:
                self._eval_and_track()  # a final measurement for every run that evaluates
            if self._last_saved_step != self.step:
                self.save(LATEST_DIR)
        except KeyboardInterrupt:
            status = "interrupted"
            self._say(f"interrupted at step {self.step}; saving a checkpoint")
            try:
                self.save(LATEST_DIR)
            except TrainingDiverged as e:  # never save NaN weights, even when asked to stop
                log.warning("%s", e)
        finally:
            self._pbar.close()
            if status == "diverged":
                self.history.status = status
                self._write_history()
                self._emit("end", {"status": status})
        self.history.append(step=self.step, event=status, tokens_seen=self.tokens_seen, elapsed=self.elapsed,
                            val_loss=self.history.last_val_loss)
        self.history.status = status
        self._write_history()
        self._emit("end", {"status": status})
        return self.history

    def close(self) -> None:
        """Leave the process group if this trainer created it."""
        cleanup_distributed(self.dist)


def train(
    model: nn.Module,
    get_batch: GetBatch,
    config: TrainConfig | None = None,
    *,
    tokenizer: Any = None,
    callback: Callable[[TrainEvent], bool | None] | None = None,
    resume: bool = False,
    metadata: dict[str, Any] | None = None,
    **overrides: Any,
) -> History:
    """One call for notebooks: `train(model, get_batch, max_iters=500, lr=1e-3)`.

    Keyword overrides replace fields of `config` (or of a default TrainConfig).
    """
    config = dataclasses.replace(config or TrainConfig(), **overrides)
    trainer = Trainer(model, get_batch, config, tokenizer=tokenizer, callback=callback, resume=resume,
                      metadata=metadata)
    try:
        return trainer.fit()
    finally:
        trainer.close()
