"""Self-checking exercises for the course notebooks.

Each notebook's checkers live in their own module (``nb01`` ... ``nb11``) and are re-exported here,
so a notebook needs only ``from minigpt.exercises import check_attention``.
"""

from ._core import CheckResult, ExerciseFailed, checker, expect

__all__ = ["CheckResult", "ExerciseFailed", "checker", "expect"]

# Per-notebook checker modules register their names below (import order = notebook order).
