"""Self-checking exercises for the course notebooks.

Each notebook's checkers live in their own module (``nb01`` ... ``nb15``); every name in a module's
``__all__`` is re-exported here, so a notebook needs only ``from minigpt.exercises import check_attention``.
``graded(exercise_id, ...)`` is the strict call nbgrader's hidden tests make (fresh checker, raises unless passed).
"""

import importlib
import pkgutil

from ._core import CheckResult, ExerciseFailed, checker, expect
from ._graded import ExerciseNotDone, graded

__all__ = ["CheckResult", "ExerciseFailed", "ExerciseNotDone", "checker", "expect", "graded"]

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("nb"):
        _module = importlib.import_module(f"{__name__}.{_info.name}")
        for _name in getattr(_module, "__all__", []):
            if _name in globals():  # two notebooks must not silently shadow each other's checkers
                raise ImportError(f"checker name {_name!r} in {_info.name} is already defined elsewhere")
            globals()[_name] = getattr(_module, _name)
            __all__.append(_name)
