"""Instructor tools: student versions of the notebooks, and the ``minigpt course`` commands.

One source of truth: the notebooks in ``notebooks/`` hold the solutions between nbgrader's markers

    # HINT: torch.tril of a ones matrix gives the lower triangle
    ### BEGIN SOLUTION
    return torch.tril(torch.ones(T, T, dtype=torch.bool))
    ### END SOLUTION

and :func:`make_student_versions` replaces each marked region by
``raise NotImplementedError("<hint>")`` at the marker's indentation (and drops the hidden-tests
regions). The exercise checkers (``minigpt.exercises``) turn that stub into the status "not done"
instead of a crash. nbgrader metadata: :mod:`minigpt.course.annotate`; grading: :mod:`minigpt.course.grading`.

``nbformat`` and ``nbclient`` are imported inside the functions, so ``import minigpt.course``
(which the CLI does at start-up) stays light.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import tempfile
from pathlib import Path

from .annotate import strip_hidden_tests
from .grading import find_submissions, grade

__all__ = [
    "SolutionMarkerError",
    "add_cli",
    "find_submissions",
    "grade",
    "grade_notebook",
    "make_student_version",
    "make_student_versions",
    "strip_solutions",
]

DEFAULT_HINT = "write your solution here"
MARKDOWN_STUB = "YOUR ANSWER HERE"  # nbgrader's text for a written answer
# Kept by clean_notebook; everything else (widgets state, timings, collapsed...) goes. The cells'
# nbgrader metadata stays: student versions are nbgrader-compatible (read-only cells, grade ids that
# `minigpt course grade` matches cells by).
NOTEBOOK_METADATA_KEYS = ("kernelspec", "language_info")
CELL_METADATA_KEYS = ("tags", "nbgrader")

# A marker line is a comment whose words are exactly BEGIN/END SOLUTION ("### BEGIN SOLUTION" in
# nbgrader's spelling; any number of '#' is accepted, and in markdown it reads as a heading).
_BEGIN = re.compile(r"^(?P<indent>[ \t]*)#+[ \t]*BEGIN SOLUTION[ \t]*$")
_END = re.compile(r"^[ \t]*#+[ \t]*END SOLUTION[ \t]*$")
_HINT = re.compile(r"^[ \t]*#[ \t]*HINT:[ \t]*(?P<hint>.*?)[ \t]*$")


class SolutionMarkerError(ValueError):
    """The solution markers of a cell do not pair up (the message names notebook and cell)."""


# ---------------------------------------------------------------------------------------------
# Student versions
# ---------------------------------------------------------------------------------------------


def strip_solutions(source: str, cell_type: str = "code", where: str = "cell") -> tuple[str, int]:
    """Replace every marked solution region of one cell's source; return (new source, regions).

    Code: the region becomes ``raise NotImplementedError("<hint>")`` at the BEGIN marker's
    indentation, the hint being a ``# HINT:`` line directly above the marker. Markdown: the
    region becomes ``YOUR ANSWER HERE``. ``where`` names the cell in error messages.
    """
    lines = source.split("\n")
    out: list[str] = []
    n_regions = 0
    begin_line = None  # 1-based line of the open BEGIN marker, None outside a region
    for lineno, line in enumerate(lines, start=1):
        begin, end = _BEGIN.match(line), _END.match(line)
        if begin:
            if begin_line is not None:
                raise SolutionMarkerError(
                    f"{where}: `### BEGIN SOLUTION` on line {lineno} is nested inside the region opened "
                    f"on line {begin_line}; close the first region with `### END SOLUTION` before opening another"
                )
            begin_line = lineno
            n_regions += 1
            if cell_type == "code":
                hint_match = _HINT.match(lines[lineno - 2]) if lineno >= 2 else None
                hint = hint_match.group("hint") if hint_match and hint_match.group("hint") else DEFAULT_HINT
                # json.dumps gives a valid Python string literal (escaped quotes, backslashes, newlines).
                out.append(f"{begin.group('indent')}raise NotImplementedError({json.dumps(hint, ensure_ascii=False)})")
            else:
                out.append(MARKDOWN_STUB)
        elif end:
            if begin_line is None:
                raise SolutionMarkerError(
                    f"{where}: `### END SOLUTION` on line {lineno} has no `### BEGIN SOLUTION` before it; "
                    f"add the BEGIN marker above the solution or delete this line"
                )
            begin_line = None
        elif begin_line is None:
            out.append(line)
    if begin_line is not None:
        raise SolutionMarkerError(
            f"{where}: `### BEGIN SOLUTION` on line {begin_line} has no matching `### END SOLUTION`; "
            f"add it on the line after the solution"
        )
    return "\n".join(out), n_regions


def _check_stub_inside_function(source: str, where: str) -> None:
    """Refuse a stub that would raise when the cell runs (top-level or class-body code).

    The student version must define the function and leave raising to the checker call, which
    reports "not done"; a stub at top level would crash the cell instead.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython magics or shell escapes: cannot check, leave it to CI execution
        return

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Raise) and not in_function and _is_stub(child):
                raise SolutionMarkerError(
                    f"{where}: the solution region on line {child.lineno} is not inside a function, so the "
                    f"student version would raise NotImplementedError as soon as the cell runs. Move the "
                    f"markers into the body of the function (or method) the student writes."
                )
            is_fn = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            visit(child, in_function or is_fn)

    visit(tree, False)


def _is_stub(node: ast.Raise) -> bool:
    exc = node.exc
    return (
        isinstance(exc, ast.Call)
        and isinstance(exc.func, ast.Name)
        and exc.func.id == "NotImplementedError"
        and len(exc.args) == 1
        and isinstance(exc.args[0], ast.Constant)
    )


def clean_notebook(nb) -> None:
    """Clear outputs and execution counts, keep only the metadata listed above, number cell ids.

    Cell ids become "0", "1", ... as ``nbstripout`` writes them, so a cleaned notebook passes
    ``nbstripout --verify``.
    """
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in NOTEBOOK_METADATA_KEYS}
    for i, cell in enumerate(nb.cells):
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in CELL_METADATA_KEYS}
        if "id" in cell:
            cell.id = str(i)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None


def make_student_version(src, dst) -> int:
    """Write the student version of one notebook; returns the number of solution regions replaced.

    Solution regions become stubs, hidden-tests regions are dropped, outputs cleared.
    """
    import nbformat

    src, dst = Path(src), Path(dst)
    nb = nbformat.read(src, as_version=4)
    n_total = 0
    for i, cell in enumerate(nb.cells, start=1):
        if cell.cell_type not in ("code", "markdown"):
            continue
        if cell.cell_type == "code":
            cell.source = strip_hidden_tests(cell.source)
        where = f"{src}, cell {i} ({cell.cell_type})"
        new_source, n = strip_solutions(cell.source, cell.cell_type, where)
        if n:
            if cell.cell_type == "code":
                _check_stub_inside_function(new_source, where)
            cell.source = new_source
            n_total += n
    clean_notebook(nb)
    nbformat.validate(nb)
    dst.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dst)
    return n_total


def make_student_versions(src_dir="notebooks", out_dir="student") -> list[Path]:
    """Write the student version of every ``*.ipynb`` in ``src_dir`` into ``out_dir``; return the paths.

    All notebooks are checked before any is written, so a malformed pair of markers in one notebook
    leaves ``out_dir`` untouched and the error names the notebook and cell.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if not src_dir.is_dir():
        raise FileNotFoundError(
            f"no folder {src_dir}: pass the folder that holds the solution notebooks (--src). The notebooks are "
            "not inside the installed package: they are the notebooks/ folder of the course's repository "
            "(git clone it, then --src <clone>/notebooks)")
    sources = sorted(p for p in src_dir.glob("*.ipynb") if not p.name.startswith("."))
    if not sources:
        raise FileNotFoundError(f"no notebooks (*.ipynb) in {src_dir}: pass the folder of solution notebooks (--src)")
    if src_dir.resolve() == out_dir.resolve():
        raise ValueError(f"--out {out_dir} is the source folder: the student versions would overwrite the solutions")
    with tempfile.TemporaryDirectory() as tmp:  # dry run: every notebook must convert cleanly first
        for src in sources:
            make_student_version(src, Path(tmp) / src.name)
    written = []
    for src in sources:
        make_student_version(src, out_dir / src.name)
        written.append(out_dir / src.name)
    return written


def grade_notebook(path, student: str, notebook: str, *, timeout: int = 600, fast: bool = False,
                   kernel_name: str = "python3", cwd=None, source_dir=None) -> list:
    """Grade one submitted notebook (a private copy of it); return its rows (:class:`minigpt.course.grading.GradeRow`).

    The instructor's notebook is ``<source_dir>/<name>.ipynb``; ``source_dir`` defaults to ``cwd``
    (where older callers pointed at the notebooks folder), else the repository's ``notebooks/``.
    """
    import shutil

    from . import grading

    path = Path(path)
    source = Path(source_dir or cwd or grading.DEFAULT_SOURCE) / f"{Path(notebook).name}.ipynb"
    opts = grading.RunOptions(fast=fast, timeout=timeout, kernel_name=kernel_name)
    with tempfile.TemporaryDirectory(prefix="minigpt-grade-") as tmp:
        copy = Path(tmp) / "submission" / student / path.name
        copy.parent.mkdir(parents=True)
        shutil.copy(path, copy)
        return grading.grade_notebook(copy, student, notebook, source, Path(tmp), opts).rows


# ---------------------------------------------------------------------------------------------
# Command line: `minigpt course annotate`, `minigpt course student` and `minigpt course grade`
# ---------------------------------------------------------------------------------------------


def add_cli(subparsers) -> None:
    """Register ``course`` (with ``annotate``, ``student`` and ``grade``) on the CLI's subparsers.

    Each leaf parser sets ``func``: the CLI calls ``args.func(args)``, which returns an exit code.
    """
    course = subparsers.add_parser("course", help="instructor tools: nbgrader metadata, student versions, grading")
    sub = course.add_subparsers(dest="course_command", metavar="{annotate,student,grade}")
    sub.required = True

    p = sub.add_parser("annotate", help="give every cell nbgrader metadata (and checker cells hidden tests)")
    p.add_argument("notebooks", nargs="+", metavar="NOTEBOOK", help="notebooks to annotate in place")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if any metadata is missing or stale")
    p.set_defaults(func=cli_annotate)

    p = sub.add_parser("student", help="write student versions of the notebooks (solutions replaced by stubs)")
    p.add_argument("--src", default="notebooks", help="folder of solution notebooks (default: notebooks)")
    p.add_argument("--out", default="student", help="folder to write the student versions to (default: student)")
    p.set_defaults(func=cli_student)

    p = sub.add_parser("grade", help="run submitted notebooks; CSV per student and exercise, summary, reports")
    p.add_argument("submissions", metavar="SUBMISSIONS",
                   help="folder: SUBMISSIONS/<student>/<notebook>.ipynb or SUBMISSIONS/<student>__<notebook>.ipynb")
    p.add_argument("--source", default=None,
                   help="folder of the instructor's notebooks (default: the notebooks/ folder beside the package)")
    p.add_argument("--out", default="grades.csv",
                   help="CSV to write (default grades.csv); also <out>_summary.csv and reports/<student>.md beside it")
    p.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    p.add_argument("--notebook-timeout", type=int, default=3600, help="seconds per notebook (default 3600)")
    p.add_argument("--fast", action="store_true", help="fast mode (MINIGPT_FAST=1; every row says 'fast'): for CI")
    p.add_argument("--full", action="store_true", help=argparse.SUPPRESS)  # the default; kept for old scripts
    p.add_argument("-j", "--jobs", type=int, default=1, help="students graded in parallel (one kernel each)")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel to run the notebooks with (default python3)")
    p.set_defaults(func=cli_grade)


def cli_annotate(args) -> int:
    """`minigpt course annotate NOTEBOOK... [--check]`."""
    from .annotate import annotate_paths

    report = annotate_paths(args.notebooks, check=args.check)
    stale = {path: diffs for path, diffs in report.items() if diffs}
    for path, diffs in stale.items():
        verb = "needs" if args.check else "annotated"
        print(f"{path}: {verb} {len(diffs)} change(s): " + "; ".join(diffs[:5]) + (" ..." if len(diffs) > 5 else ""))
    if args.check and stale:
        print("run: minigpt course annotate " + " ".join(stale))
        return 1
    print(f"{len(report)} notebook(s) {'checked' if args.check else 'annotated'}, {len(stale)} changed")
    return 0


def cli_student(args) -> int:
    """`minigpt course student --src notebooks --out student`."""
    paths = make_student_versions(args.src, args.out)
    for p in paths:
        print(f"wrote {p}")
    print(f"{len(paths)} student notebooks in {args.out}/")
    return 0


def cli_grade(args) -> int:
    """`minigpt course grade SUBMISSIONS --out grades.csv`."""
    from .grading import DEFAULT_SOURCE, RunOptions, grade, summarize

    opts = RunOptions(fast=args.fast, timeout=args.timeout, notebook_timeout=args.notebook_timeout,
                      kernel_name=args.kernel)
    rows = grade(args.submissions, args.out, source_dir=args.source or DEFAULT_SOURCE, opts=opts, jobs=args.jobs,
                 progress=lambda student: print(f"graded {student}", flush=True))
    for student, per in sorted(summarize(rows).items()):
        got, top, manual = (sum(v[k] for v in per.values()) for k in range(3))
        extra = f" (+{manual} to grade by hand)" if manual else ""
        print(f"{student}: {got}/{top} points{extra}")
    out = Path(args.out)
    print(f"wrote {out} ({len(rows)} rows, {'fast' if args.fast else 'full'} mode), "
          f"{out.with_name(out.stem + '_summary.csv')}, {out.parent / 'reports'}/")
    return 0
