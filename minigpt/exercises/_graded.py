"""Strict grading calls: run an exercise's checker from a fresh copy of its module, raise unless passed.

``graded("01.3", my_causal_mask)`` is what an nbgrader hidden-test region calls: the checker comes
from a copy of ``nbNN.py`` (and of ``_core.py``) loaded from disk for this call, so rebinding
``check_causal_mask`` or monkeypatching ``minigpt.exercises`` in the notebook changes nothing; and a
stub ("not done") raises, so nbgrader scores it 0 instead of counting a returned call as a pass.

:func:`report` is the same call for ``minigpt course grade``: it also prints one record line tagged
with a token only the grader knows (the grader reads that line from its own cell's output).
This module imports only the standard library at top level: the grader loads it by file path.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import os
import secrets
import sys
import types
from collections.abc import Callable
from pathlib import Path

__all__ = ["ExerciseNotDone", "graded", "report", "RECORD_PREFIX"]

RECORD_PREFIX = "MINIGPT-GRADE"
_HERE = Path(__file__).resolve().parent  # minigpt/exercises
_PACKAGE_DIR = _HERE.parent  # minigpt


class ExerciseNotDone(AssertionError):
    """The exercise still raises NotImplementedError (graded as 0, not as a pass)."""


def _fresh_package() -> str:
    """Register an empty package ``minigpt._graded_<random>`` whose modules load from exercises/.

    It sits directly under ``minigpt`` so the checkers' ``from ..model import GPT`` still resolves,
    while ``from ._core import checker`` gets a fresh ``_core`` of its own.
    """
    minigpt = sys.modules.get("minigpt") or importlib.import_module("minigpt")
    if Path(minigpt.__file__).resolve().parent != _PACKAGE_DIR:
        raise ImportError(f"the minigpt imported here ({minigpt.__file__}) is not the course's ({_PACKAGE_DIR})")
    name = f"minigpt._graded_{secrets.token_hex(8)}"
    package = types.ModuleType(name)
    package.__path__ = [str(_HERE)]
    package.__package__ = name
    sys.modules[name] = package
    return name


def fresh_checker(exercise_id: str) -> Callable:
    """The checker of ``exercise_id`` ("01.3" or "01.3 causal mask") from a fresh copy of its module."""
    number = exercise_id.split()[0]
    notebook = number.split(".")[0]
    if not (_HERE / f"nb{notebook}.py").is_file():
        raise LookupError(f"no checker module nb{notebook}.py for exercise {number}")
    package = _fresh_package()
    module = importlib.import_module(f"{package}.nb{notebook}")
    sys.modules[f"{package}._core"]._record_enabled = False  # the visible call records; no second line
    for name in getattr(module, "__all__", []):
        fn = getattr(module, name)
        if str(getattr(fn, "exercise", "")).split()[:1] == [number]:
            return fn
    raise LookupError(f"nb{notebook}.py has no checker for exercise {number}")


def _run(exercise_id: str, args: tuple, kwargs: dict) -> tuple[str, str, str, BaseException | None]:
    """Run the fresh checker, its prints swallowed; return (exercise, status, message, error to re-raise)."""
    check = fresh_checker(exercise_id)
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            result = check(*args, **kwargs)
        except AssertionError as e:  # the fresh _core's ExerciseFailed
            return check.exercise, "failed", str(e).removeprefix(f"Exercise {check.exercise}: "), e
    if result.status == "passed":
        return check.exercise, "passed", "", None
    return check.exercise, "not done", result.message, None


def graded(exercise_id: str, *args, **kwargs) -> None:
    """Run exercise ``exercise_id``'s checker (fresh copy) on the arguments; raise unless it passes."""
    exercise, status, message, error = _run(exercise_id, args, kwargs)
    if error is not None:
        raise error
    if status != "passed":
        raise ExerciseNotDone(f"Exercise {exercise}: not done ({message}); graded as 0")


def report(token: str, fast: bool, exercise_id: str, *args, **kwargs):
    """:func:`graded` for ``minigpt course grade``: print ``MINIGPT-GRADE <token> {json}``, then behave
    like the visible checker call (return the status, raise when the answer is wrong).

    ``MINIGPT_FAST`` is reset to the grader's mode first: a notebook that set it cannot soften the check.
    """
    os.environ["MINIGPT_FAST"] = "1" if fast else "0"
    write, flush = sys.stdout.write, sys.stdout.flush  # taken before the student's code runs in the check
    try:
        exercise, status, message, error = _run(exercise_id, args, kwargs)
    except Exception as e:  # a broken checker or a missing module: an error row, not a crash
        exercise, status, message, error = exercise_id, "error", f"{type(e).__name__}: {e}", e
    record = {"exercise": exercise, "status": status, "message": message}
    write(f"{RECORD_PREFIX} {token} {json.dumps(record)}\n")
    flush()
    if error is not None:
        raise error
    return status
