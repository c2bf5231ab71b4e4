"""Experiment loggers: the rows `History` records, sent to TensorBoard or Weights & Biases too.

One small interface, `RunLogger.log_row(row)` + `close()`, receives every History row (columns
`minigpt.training.history.COLUMNS`: "step" rows with train loss, lr, grad norm and tokens/s, "eval" rows with
train/val loss and perplexity, and the final row whose event is the stop status). `LoggerCallback`
is a trainer callback that forwards the rows History gained since the previous event, so the
trainer needs nothing new: `Trainer(..., callback=LoggerCallback(logger))`.

    csv          the trainer's own history.csv / history.json (always written; nothing extra)
    tensorboard  torch.utils.tensorboard.SummaryWriter into out_dir/tensorboard (package `tensorboard`)
    wandb        wandb.init(project, config, dir, mode) + wandb.log(dict, step) (package `wandb`;
                 WANDB_MODE=offline keeps the run on disk, `wandb sync` uploads it later)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

__all__ = ["LOGGERS", "CSVLogger", "LoggerCallback", "MissingLoggerError", "RunLogger", "TensorBoardLogger",
           "WandbLogger", "make_logger"]

LOGGERS = ("csv", "tensorboard", "wandb")
# History columns -> scalar names, per kind of row
_STEP_SCALARS = {"train_loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
                 "tokens_per_s": "train/tokens_per_s", "tokens_seen": "train/tokens_seen"}
_EVAL_SCALARS = {"train_loss": "eval/train_loss", "val_loss": "eval/val_loss", "val_ppl": "eval/val_ppl"}


class RunLogger(Protocol):
    def log_row(self, row: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of one History row under their logger names ("train/loss", "eval/val_loss", ...)."""
    names = _EVAL_SCALARS if row.get("event") == "eval" else _STEP_SCALARS if row.get("event") == "step" else {}
    out = {name: float(row[col]) for col, name in names.items() if row.get(col) is not None}
    return out


class CSVLogger:
    """The default: the trainer already writes history.csv and history.json into out_dir."""

    def log_row(self, row: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Scalars into `log_dir` (view with `tensorboard --logdir <log_dir>`)."""

    def __init__(self, log_dir: str | Path, config: dict[str, Any] | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package

        self.writer = SummaryWriter(log_dir=str(log_dir))
        if config:
            self.writer.add_text("config", "\n".join(f"    {k} = {v!r}" for k, v in config.items()))

    def log_row(self, row: dict[str, Any]) -> None:
        for name, value in scalars(row).items():
            self.writer.add_scalar(name, value, global_step=row["step"])
        if row.get("event") not in ("step", "eval"):
            self.writer.add_text("status", str(row.get("event")), global_step=row["step"])

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """A Weights & Biases run; `mode` None follows WANDB_MODE (set it to "offline" to stay local)."""

    def __init__(self, project: str, config: dict[str, Any] | None = None, dir: str | Path | None = None,
                 mode: str | None = None) -> None:
        import wandb  # optional: pip install wandb

        if dir is not None:
            Path(dir).mkdir(parents=True, exist_ok=True)
        self.wandb = wandb
        chosen: Any = mode or os.environ.get("WANDB_MODE") or None  # "online", "offline" or "disabled"
        self.run = wandb.init(project=project, config=config or {}, dir=None if dir is None else str(dir),
                              mode=chosen)

    def log_row(self, row: dict[str, Any]) -> None:
        values: dict[str, Any] = dict(scalars(row))
        if row.get("event") not in ("step", "eval"):
            values["status"] = row.get("event")
        if values:
            self.wandb.log(values, step=row["step"])

    def close(self) -> None:
        self.wandb.finish()


class MissingLoggerError(ValueError):
    """The package a logger needs is not installed; the message names it (one line from the CLI)."""


def make_logger(name: str, out_dir: str | Path | None, config: dict[str, Any] | None = None) -> RunLogger:
    """The logger called `name` ("csv", "tensorboard" or "wandb") writing under `out_dir`."""
    if name not in LOGGERS:
        raise ValueError(f"logger must be one of {', '.join(LOGGERS)}, got {name!r}")
    if name == "csv":
        return CSVLogger()
    where = Path(out_dir) if out_dir is not None else Path("out")
    if name == "tensorboard":
        try:
            return TensorBoardLogger(where / "tensorboard", config)
        except ImportError:
            raise MissingLoggerError(
                "--logger tensorboard needs the tensorboard package: pip install tensorboard") from None
    try:
        return WandbLogger(project=os.environ.get("WANDB_PROJECT", "minigpt"), config=config, dir=where)
    except ImportError:
        raise MissingLoggerError("--logger wandb needs the wandb package: pip install wandb "
                                 "(WANDB_MODE=offline to log without an account)") from None


class LoggerCallback:
    """A trainer callback sending the History rows added since the previous event to `logger`.

    Rows a resumed run loaded from its checkpoint (steps before the first event) were logged by the
    earlier run and are skipped. The "end" event closes the logger.
    """

    def __init__(self, logger: RunLogger) -> None:
        self.logger = logger
        self._sent: int | None = None

    def __call__(self, event: Any) -> None:
        rows = event.history.rows
        if self._sent is None:
            self._sent = sum(1 for r in rows if r["step"] < event.step)
        for row in rows[self._sent:]:
            self.logger.log_row(row)
        self._sent = len(rows)
        if event.kind == "end":
            self.logger.close()
