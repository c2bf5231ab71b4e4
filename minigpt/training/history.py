"""What a training run records, and how it shows progress.

`History` is the run as data: one row per `log_interval` steps, one per evaluation and a final row
(columns `COLUMNS`), written to CSV/JSON and plotted. `ProgressLog` is the only place that talks to
the person watching: a tqdm bar with loss, learning rate and tokens/s, and one line per evaluation.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from .. import atomic  # through the module, so a test can forbid writes on non-zero ranks

__all__ = ["COLUMNS", "History", "ProgressLog"]

log = logging.getLogger("minigpt.train")

COLUMNS = ("step", "event", "train_loss", "val_loss", "val_ppl", "lr", "grad_norm", "tokens_seen",
           "elapsed", "tokens_per_s")


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
            atomic.atomic_write_bytes(path, text.encode())
        return text

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in COLUMNS})
        if path is not None:
            atomic.atomic_write_bytes(path, buf.getvalue().encode())
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


class ProgressLog:
    """What the person watching sees (main rank, `enabled`), plus `logging` everywhere.

    Per-step progress (`steps=True`) is a tqdm bar when stderr is a terminal or a notebook; when
    it is not (a log file, CI, a pipe) it is one plain line every `interval` seconds instead, so logs
    hold no carriage returns. `TQDM_DISABLE=1` turns the bar into those plain lines too.
    `steps=False` (the CLI's --quiet) shows no per-step progress but keeps the evaluation lines.
    `interval` None reads MINIGPT_PROGRESS_INTERVAL (seconds), default 10.

    `throughput(tokens_seen)` is the tokens/s since the previous call, for the history rows.
    """

    def __init__(self, enabled: bool, *, steps: bool = True, interval: float | None = None,
                 stream: Any = None) -> None:
        self.enabled = enabled
        self.steps = steps
        self.interval = _interval(interval)
        self.stream = stream  # None = sys.stderr at the time of writing
        self._bar: Any = None
        self._plain = False  # plain lines instead of a bar
        self._t, self._tokens = time.perf_counter(), 0
        self._step = self._total = 0
        self._postfix = ""
        self._t_line = self._t_start = time.perf_counter()
        self._step_line = -1

    def _stream(self) -> Any:
        import sys

        return self.stream if self.stream is not None else sys.stderr

    def open(self, total: int, initial: int, tokens_seen: int) -> None:
        self._t, self._tokens = time.perf_counter(), tokens_seen
        self._step, self._total = initial, total
        self._t_line = self._t_start = time.perf_counter()
        self._step_line = initial
        show = self.enabled and self.steps
        if show and _wants_bar(self._stream()):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True, file=self.stream)
        self._plain = show and self._bar is None

    def advance(self) -> None:
        self._step += 1
        if self._bar is not None:
            self._bar.update(1)
        elif self._plain and time.perf_counter() - self._t_line >= self.interval:
            self._line()

    def _line(self) -> None:
        now = time.perf_counter()
        pct = f" ({100 * self._step / self._total:.0f}%)" if self._total else ""
        text = f"train: step {self._step}/{self._total}{pct}{self._postfix}, {now - self._t_start:.0f} s"
        print(text, file=self._stream(), flush=True)
        self._t_line, self._step_line = now, self._step

    def throughput(self, tokens_seen: int) -> float:
        now = time.perf_counter()
        tps = (tokens_seen - self._tokens) / max(now - self._t, 1e-9)
        self._t, self._tokens = now, tokens_seen
        return tps

    def show(self, loss: float, lr: float, tokens_per_s: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
        self._postfix = f", loss {loss:.4f}, lr {lr:.2e}, {tokens_per_s:,.0f} tok/s"

    def say(self, text: str) -> None:
        log.info(text)
        if not self.enabled:
            return
        if self._bar is not None:
            from tqdm.auto import tqdm

            tqdm.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._plain and self._step != self._step_line:
            self._line()  # where the run ended
        self._plain = False


def _interval(seconds: float | None) -> float:
    if seconds is None:
        text = os.environ.get("MINIGPT_PROGRESS_INTERVAL", "10")
        try:
            seconds = float(text)
        except ValueError:
            raise ValueError(f"MINIGPT_PROGRESS_INTERVAL must be a number of seconds, got {text!r}") from None
    if not seconds >= 0:
        raise ValueError(f"the progress interval must be >= 0 seconds, got {seconds}")
    return float(seconds)


def _wants_bar(stream: Any) -> bool:
    """A tqdm bar for a terminal or a Jupyter kernel's stream (which renders carriage returns),
    unless TQDM_DISABLE is set."""
    if os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false"):
        return False
    if type(stream).__module__.startswith("ipykernel"):
        return True
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False
