"""Ctrl-C and SIGTERM as a request to stop at the next step boundary, never in the middle of one.

An interrupt raised as `KeyboardInterrupt` can land anywhere: after a batch was drawn but before
the step that uses it, or half-way through writing a checkpoint. A resumed run would then draw
different batches than a straight run, and a second Ctrl-C could abandon the save. Inside
`StopSignals` a signal only sets a flag; the trainer finishes the current step, saves, and
returns; every further signal while it does so is reported and ignored (SIGKILL still ends the
process at once, leaving the last checkpoint). `exit_code` is the shell's convention, 128 + signal
number (130 for Ctrl-C, 143 for SIGTERM).

Outside the main thread Python cannot install handlers: there it does nothing and Ctrl-C raises
`KeyboardInterrupt` as usual.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

__all__ = ["StopSignals"]

_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None)


class StopSignals:
    """Context manager: SIGINT/SIGTERM set `.signum` instead of raising (see the module docstring)."""

    def __init__(self, message: str = "stopping after this step and saving a checkpoint") -> None:
        self.message = message
        self.signum: int | None = None  # the first signal received, None if none
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """128 + the signal's number (130 for SIGINT, 143 for SIGTERM); 0 if no signal came."""
        return 128 + self.signum if self.signum is not None else 0

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum = signum
            print(f"\n{name}: {self.message}", file=sys.stderr, flush=True)
        else:
            print(f"\n{name}: already stopping; the checkpoint is being saved, please wait",
                  file=sys.stderr, flush=True)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
