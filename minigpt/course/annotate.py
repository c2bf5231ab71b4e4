"""nbgrader cell metadata for the course notebooks, derived from the exercise conventions.

``minigpt course annotate notebooks/*.ipynb`` gives every cell nbgrader's metadata (schema 3):

- scaffold code cell (holds ``### BEGIN SOLUTION``): solution cell, ``exNN_k_code``;
- checker cell (calls a ``check_*`` from ``minigpt.exercises``): autograded test cell, ``exNN_k_check``,
  points from the heading (easy 1, medium 2, hard 3), plus a hidden-tests region calling
  ``graded("NN.k", <the same arguments>)`` (imported fresh from disk), which raises unless the exercise passes;
- markdown cell holding a solution region (a written answer): manually graded, ``exNN_k_written``,
  1 point for an easy exercise, else 2;
- every other cell: read-only, ``cell_<position>``.

The exercise of a cell is the last ``### Exercise NN.k (difficulty, ~M min) · title`` heading above it.
Running it twice changes nothing (``--check`` reports notebooks whose metadata is missing or stale).
Only the standard library is imported at top level; nbformat inside the functions.
"""

from __future__ import annotations

import ast
import copy
import re
from functools import cache
from pathlib import Path

__all__ = ["AnnotateError", "HEADING", "STRICT_HEADING", "annotate_notebook", "annotate_paths", "checker_ids",
           "exercise_headings", "strip_hidden_tests"]

# Lenient: difficulty is enough to give points ("harder" counts as hard); tests/test_course.py
# enforces the full form `### Exercise NN.k (easy|medium|hard, ~M min) · title`.
HEADING = re.compile(r"^#+[ \t]*Exercise[ \t]+(?P<id>\d\d\.\d+)\b[ \t]*(?:\((?P<difficulty>easy|medium|hard))?",
                     re.MULTILINE)
STRICT_HEADING = re.compile(
    r"^### Exercise (?P<id>\d\d\.\d+) \((?P<difficulty>easy|medium|hard), ~(?P<minutes>\d+) min\) · (?P<title>\S.*)$")
POINTS = {"easy": 1, "medium": 2, "hard": 3}
WRITTEN_POINTS = {"easy": 1, "medium": 2, "hard": 2}
HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
_SOLUTION = re.compile(r"^[ \t]*#+[ \t]*BEGIN SOLUTION[ \t]*$", re.MULTILINE)
_HIDDEN = re.compile(r"\n*^[ \t]*#+[ \t]*BEGIN HIDDEN TESTS[ \t]*$.*?^[ \t]*#+[ \t]*END HIDDEN TESTS[ \t]*$\n?",
                     re.MULTILINE | re.DOTALL)
_EXERCISES_DIR = Path(__file__).resolve().parents[1] / "exercises"
# `graded` itself from disk, not from the notebook's (patchable) modules; it loads the checker fresh too.
_FRESH_IMPORT = ("import importlib, sys\n"
                 'sys.modules.pop("minigpt.exercises._graded", None)\n'
                 'graded = importlib.import_module("minigpt.exercises._graded").graded')


class AnnotateError(ValueError):
    """A cell the conventions cannot place (the message names notebook, cell and fix)."""


@cache
def checker_ids() -> dict[str, str]:
    """``{"check_causal_mask": "01.3 causal mask", ...}`` read from the ``@checker`` decorators (no import)."""
    ids = {}
    for path in sorted(_EXERCISES_DIR.glob("nb*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef):
                for dec in node.decorator_list:
                    if (isinstance(dec, ast.Call) and getattr(dec.func, "id", "") == "checker" and dec.args
                            and isinstance(dec.args[0], ast.Constant)):
                        ids[node.name] = str(dec.args[0].value)
    return ids


def strip_hidden_tests(source: str) -> str:
    """The source without its hidden-tests region (what students see)."""
    if not _HIDDEN.search(source):
        return source
    return _HIDDEN.sub("\n", source).rstrip("\n")


def has_solution(source: str) -> bool:
    return bool(_SOLUTION.search(source))


def exercise_headings(nb) -> dict[str, str | None]:
    """``{exercise number: difficulty or None}`` for every exercise heading in the notebook's markdown."""
    found: dict[str, str | None] = {}
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for m in HEADING.finditer(cell.source):
                found[m.group("id")] = m.group("difficulty")
    return found


def checker_call(source: str) -> tuple[str, str, list[str]] | None:
    """``(checker name, exercise, argument sources)`` of the cell's checker call, or None without one."""
    try:
        tree = ast.parse(strip_hidden_tests(source))
    except SyntaxError:
        return None
    ids = checker_ids()
    calls = [(n, n.func.id) for n in ast.walk(tree)
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ids]
    if not calls:
        return None
    if len({name for _, name in calls}) > 1:
        raise AnnotateError(f"calls {sorted({name for _, name in calls})}: one checker per cell")
    (call, name), text = calls[0], strip_hidden_tests(source)
    args = [ast.get_source_segment(text, a) or "" for a in call.args]
    for k in call.keywords:
        value = ast.get_source_segment(text, k.value)
        args.append(f"{k.arg}={value}" if k.arg else f"**{value}")
    return name, ids[name], args


def hidden_region(exercise: str, args: list[str]) -> str:
    number = exercise.split()[0]
    call = ", ".join([f'"{number}"', *args])
    return f"{HIDDEN_BEGIN}\n{_FRESH_IMPORT}\ngraded({call})\n{HIDDEN_END}"


def _meta(grade_id: str, *, grade: bool = False, solution: bool = False, locked: bool = True,
          points: int | None = None) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3, "solution": solution,
            "task": False}
    if points is not None:
        meta["points"] = points
    return meta


def _slug(number: str) -> str:
    return "ex" + number.replace(".", "_")


def _annotate_cell(cell, i: int, current: str | None, headings: dict, used: set[str], where: str) -> None:
    """Set one cell's nbgrader metadata (and hidden tests for a checker cell)."""
    def need_exercise(what: str) -> str:
        if current is None:
            raise AnnotateError(f"{where}: {what} before any `### Exercise NN.k (...)` heading; add one above it")
        return current

    def unique(grade_id: str) -> str:
        n, base = 1, grade_id
        while grade_id in used:
            n += 1
            grade_id = f"{base}{n}"
        used.add(grade_id)
        return grade_id

    call = checker_call(cell.source) if cell.cell_type == "code" else None
    if cell.cell_type == "code" and has_solution(cell.source):
        if call:
            raise AnnotateError(f"{where}: a solution cell also calls {call[0]}; move the checker call to its own cell")
        meta = _meta(unique(f"{_slug(need_exercise('a solution cell'))}_code"), solution=True, locked=False)
    elif call:
        number = call[1].split()[0]
        if number not in headings:
            raise AnnotateError(f"{where}: {call[0]} checks exercise {number} but the notebook has no "
                                f"`### Exercise {number} (easy|medium|hard, ~M min) · title` heading")
        points = POINTS.get(headings[number] or "", None)
        if points is None:
            raise AnnotateError(f"{where}: the heading of exercise {number} does not say easy, medium or hard")
        cell.source = strip_hidden_tests(cell.source).rstrip() + "\n\n" + hidden_region(call[1], call[2])
        meta = _meta(unique(f"{_slug(number)}_check"), grade=True, points=points)
    elif cell.cell_type == "markdown" and has_solution(cell.source):
        number = need_exercise("a written-answer cell")
        meta = _meta(unique(f"{_slug(number)}_written"), grade=True, solution=True, locked=False,
                     points=WRITTEN_POINTS.get(headings.get(number) or "", 2))
    else:
        meta = _meta(unique(f"cell_{i}"))
    cell.metadata["nbgrader"] = meta


def annotate_notebook(nb, where: str = "notebook"):
    """Return a copy of ``nb`` with nbgrader metadata on every cell (see the module docstring)."""
    nb = copy.deepcopy(nb)
    headings = exercise_headings(nb)
    current, used = None, set[str]()
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            ids = [m.group("id") for m in HEADING.finditer(cell.source)]
            current = ids[-1] if ids else current
        try:
            _annotate_cell(cell, i, current, headings, used, f"{where}, cell {i + 1} ({cell.cell_type})")
        except AnnotateError as e:
            if str(e).startswith(where):
                raise
            raise AnnotateError(f"{where}, cell {i + 1}: {e}") from None
    return nb


def _differences(old, new) -> list[str]:
    out = []
    for i, (a, b) in enumerate(zip(old.cells, new.cells), start=1):
        if a.source != b.source:
            out.append(f"cell {i}: source (hidden tests missing or stale)")
        if a.metadata.get("nbgrader") != b.metadata.get("nbgrader"):
            out.append(f"cell {i}: nbgrader metadata missing or stale")
    return out


def annotate_paths(paths, check: bool = False) -> dict[str, list[str]]:
    """Annotate notebooks in place, or with ``check`` only report; returns {path: differences}."""
    import nbformat

    report = {}
    for path in map(Path, paths):
        nb = nbformat.read(path, as_version=4)
        new = annotate_notebook(nb, str(path))
        report[str(path)] = _differences(nb, new)
        if not check and report[str(path)]:
            nbformat.validate(new)
            nbformat.write(new, path)
    return report
