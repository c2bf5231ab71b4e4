"""The machinery every exercise checker shares.

A checker runs a student's function on several inputs, compares with a reference the student did not
write, and explains a mismatch in teaching terms. Three outcomes:

- passed: prints a short confirmation and returns a :class:`CheckResult`;
- not done: the student's code still raises ``NotImplementedError`` (the stub the student version
  ships with): prints a reminder and returns a result with ``status == "not done"``; never crashes;
- failed: raises :class:`ExerciseFailed` (an ``AssertionError``) whose message says what is wrong,
  so the cell turns red in Jupyter and a solution notebook that regresses fails in CI.

When the environment variable ``MINIGPT_RESULTS_FILE`` names a file, every result is appended to it
as one JSON line (a convenience for collecting results from a run; ``minigpt course grade`` does not
trust it: it reads the grader's own check, see :mod:`._graded`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import sysconfig
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["CheckResult", "ExerciseFailed", "checker", "expect", "forbid", "RESULTS_ENV"]

RESULTS_ENV = "MINIGPT_RESULTS_FILE"
_record_enabled = True  # False in the fresh copies :mod:`._graded` loads (the visible call records once)


class ExerciseFailed(AssertionError):
    """A student's answer is wrong; the message explains why in teaching terms."""


@dataclass
class CheckResult:
    exercise: str  # e.g. "01.3 causal mask"
    status: str  # "passed", "failed" or "not done"
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:  # a bare checker call in a notebook echoes this under its message
        return f"<{self.exercise}: {self.status}>"


def expect(condition: bool, message: str) -> None:
    """Fail the exercise with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ExerciseFailed(message)


# Library code a traceback passes through on its way out of the student's function: quoting one of
# these lines would point the student at torch's source instead of their own.
_LIBRARY_DIRS = tuple(
    str(Path(p).resolve())
    for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platlib"]}
) + (str(Path(__file__).resolve().parents[1]),)


def _student_frame(tb) -> traceback.FrameSummary:
    """The innermost frame of the traceback that is not library code (the student's line)."""
    frames = traceback.extract_tb(tb)
    for frame in reversed(frames):
        path = str(Path(frame.filename).resolve()) if not frame.filename.startswith("<") else frame.filename
        if not path.startswith(_LIBRARY_DIRS):
            return frame
    return frames[-1]


@contextlib.contextmanager
def forbid(banned: dict[str, str]) -> Iterator[None]:
    """Make the named callables fail the exercise while the block runs.

    ``banned`` maps a dotted name (``"torch.softmax"``, ``"torch.Tensor.softmax"``) to the message the
    student sees when their code calls it, e.g. "the task asks you to write softmax yourself". Wrap
    only the call of the student's function: the checker's own reference may use them freely.
    """
    saved = []
    try:
        for dotted, message in banned.items():
            owner_name, attr = dotted.rsplit(".", 1)
            owner = _resolve(owner_name)
            saved.append((owner, attr, vars(owner).get(attr)))  # None: inherited, so delete to restore
            setattr(owner, attr, _banned(dotted, message))
        yield
    finally:
        for owner, attr, original in reversed(saved):
            if original is None:
                delattr(owner, attr)
            else:
                setattr(owner, attr, original)


def _resolve(dotted: str):
    module_name, _, rest = dotted.partition(".")
    obj = importlib.import_module(module_name)
    for part in rest.split(".") if rest else []:
        obj = getattr(obj, part) if hasattr(obj, part) else importlib.import_module(f"{obj.__name__}.{part}")
    return obj


def _banned(name: str, message: str) -> Callable:
    def refuse(*args, **kwargs):
        raise ExerciseFailed(f"your code calls {name}: {message}")

    return refuse


def _record(result: CheckResult) -> None:
    path = os.environ.get(RESULTS_ENV)
    if path and _record_enabled:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(result)) + "\n")


def checker(exercise: str) -> Callable:
    """Turn ``fn(student_answer, ...)`` into a checker with the three outcomes described above.

    Inside ``fn`` call :func:`expect` (or raise :class:`ExerciseFailed`) with a message in teaching
    terms. Any other exception raised by the student's code is reported as a failure that quotes it.
    """

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args, **kwargs) -> CheckResult:
            try:
                fn(*args, **kwargs)
            except NotImplementedError:
                result = CheckResult(exercise, "not done", "still raises NotImplementedError")
                print(f"[ ] Exercise {exercise}: not done yet - replace the `raise NotImplementedError` line.")
                _record(result)
                return result
            except ExerciseFailed as e:
                result = CheckResult(exercise, "failed", str(e))
                _record(result)
                raise ExerciseFailed(f"Exercise {exercise}: {e}") from None
            except Exception as e:  # the student's code crashed: say where
                frame = _student_frame(e.__traceback__)
                msg = f"your code raised {type(e).__name__}: {e} (line {frame.lineno}: {frame.line!s})"
                result = CheckResult(exercise, "failed", msg)
                _record(result)
                raise ExerciseFailed(f"Exercise {exercise}: {msg}") from e
            result = CheckResult(exercise, "passed")
            print(f"[x] Exercise {exercise}: passed.")
            _record(result)
            return result

        run.exercise = exercise
        return run

    return wrap
