"""The machinery every exercise checker shares.

A checker runs a student's function on several inputs, compares with a reference the student did not
write, and explains a mismatch in teaching terms. Three outcomes:

- passed: prints a short confirmation and returns a :class:`CheckResult`;
- not done: the student's code still raises ``NotImplementedError`` (the stub the student version
  ships with): prints a reminder and returns a result with ``status == "not done"``; never crashes;
- failed: raises :class:`ExerciseFailed` (an ``AssertionError``) whose message says what is wrong,
  so the cell turns red in Jupyter and a solution notebook that regresses fails in CI.

When the environment variable ``MINIGPT_RESULTS_FILE`` names a file, every result is appended to it
as one JSON line; ``minigpt course grade`` uses that to build its per-student CSV.
"""

from __future__ import annotations

import functools
import json
import os
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass

__all__ = ["CheckResult", "ExerciseFailed", "checker", "expect", "RESULTS_ENV"]

RESULTS_ENV = "MINIGPT_RESULTS_FILE"


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


def _record(result: CheckResult) -> None:
    path = os.environ.get(RESULTS_ENV)
    if path:
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
                tb = traceback.extract_tb(e.__traceback__)[-1]
                msg = f"your code raised {type(e).__name__}: {e} (line {tb.lineno}: {tb.line!s})"
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
