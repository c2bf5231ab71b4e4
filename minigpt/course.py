"""Instructor tools: student versions of the notebooks, and grading a folder of submissions.

One source of truth: the notebooks in ``notebooks/`` hold the solutions between nbgrader's markers

    # HINT: torch.tril of a ones matrix gives the lower triangle
    ### BEGIN SOLUTION
    return torch.tril(torch.ones(T, T, dtype=torch.bool))
    ### END SOLUTION

and :func:`make_student_versions` replaces each marked region by
``raise NotImplementedError("<hint>")`` at the marker's indentation. The exercise checkers
(``minigpt.exercises``) turn that stub into the status "not done" instead of a crash, and append
every result to ``$MINIGPT_RESULTS_FILE``; :func:`grade` runs each submitted notebook with that
variable set and collects the lines into a CSV.

``nbformat`` and ``nbclient`` are imported inside the functions, so ``import minigpt.course``
(which the CLI does at start-up) stays light.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "CSV_COLUMNS",
    "GradeRow",
    "SolutionMarkerError",
    "add_cli",
    "find_submissions",
    "grade",
    "make_student_version",
    "make_student_versions",
    "strip_solutions",
]

DEFAULT_HINT = "write your solution here"
MARKDOWN_STUB = "YOUR ANSWER HERE"  # nbgrader's text for a written answer
CSV_COLUMNS = ("student", "notebook", "exercise", "status", "message")
# Kept by clean_metadata; everything else (widgets state, timings, nbgrader's cell ids, collapsed...) goes.
NOTEBOOK_METADATA_KEYS = ("kernelspec", "language_info")
CELL_METADATA_KEYS = ("tags",)

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
    """Write the student version of one notebook; returns the number of solution regions replaced."""
    import nbformat

    src, dst = Path(src), Path(dst)
    nb = nbformat.read(src, as_version=4)
    n_total = 0
    for i, cell in enumerate(nb.cells, start=1):
        if cell.cell_type not in ("code", "markdown"):
            continue
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
        raise FileNotFoundError(f"no folder {src_dir}: pass the folder that holds the solution notebooks (--src)")
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


# ---------------------------------------------------------------------------------------------
# Grading
# ---------------------------------------------------------------------------------------------


@dataclass
class GradeRow:
    student: str
    notebook: str
    exercise: str  # the checker's id ("01.3 causal mask"), or "(cell N)" / "(notebook)" for a crash
    status: str  # "passed", "failed", "not done" (from the checkers) or "error" (crash outside them)
    message: str = ""


def find_submissions(submissions_dir) -> list[tuple[str, str, Path]]:
    """List ``(student, notebook, path)`` for every submitted notebook, sorted.

    Two layouts are accepted (they may be mixed):

    - ``submissions/<student>/<notebook>.ipynb`` (also deeper, as nbgrader's
      ``submitted/<student>/<assignment>/<notebook>.ipynb``: the notebook is then named by its path
      below the student folder, e.g. ``ps1/01_attention_mechanism``);
    - ``submissions/<student>__<notebook>.ipynb`` (two underscores separate student and notebook).
    """
    root = Path(submissions_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no folder {root}: pass the folder of submissions (submissions/<student>/<nb>.ipynb)")
    found = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            for path in sorted(entry.rglob("*.ipynb")):
                rel = path.relative_to(entry)
                if any(part.startswith(".") for part in rel.parts):  # .ipynb_checkpoints and friends
                    continue
                found.append((entry.name, rel.with_suffix("").as_posix(), path))
        elif entry.suffix == ".ipynb":
            student, sep, notebook = entry.stem.partition("__")
            if not sep or not student or not notebook:
                raise ValueError(
                    f"cannot tell the student from the file name {entry}: put it in a folder per student "
                    f"(submissions/<student>/{entry.name}) or name it <student>__<notebook>.ipynb"
                )
            found.append((student, notebook, entry))
    if not found:
        raise FileNotFoundError(
            f"no submitted notebooks in {root}: expected submissions/<student>/<notebook>.ipynb "
            f"or submissions/<student>__<notebook>.ipynb"
        )
    return sorted(found)


def _read_results(path: Path, student: str, notebook: str) -> list[GradeRow]:
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            exercise, status, message = str(rec["exercise"]), str(rec["status"]), str(rec.get("message", ""))
            rows.append(GradeRow(student, notebook, exercise, status, message))
        except (ValueError, KeyError, TypeError):
            rows.append(GradeRow(student, notebook, "(results)", "error", f"unreadable checker record: {line[:200]}"))
    return rows


def _cell_error_rows(nb, student: str, notebook: str, timeout: int) -> list[GradeRow]:
    """Rows for errors raised outside the checkers (a checker failure is already in the results)."""
    rows = []
    for i, cell in enumerate(nb.cells, start=1):
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") != "error" or out.get("ename") == "ExerciseFailed":
                continue
            ename, evalue = out.get("ename", "Error"), out.get("evalue", "")
            # A stub called outside a checker: the exercise is unfinished, not broken.
            status = "not done" if ename == "NotImplementedError" else "error"
            message = f"{ename}: {evalue}"
            if ename == "KeyboardInterrupt":  # nbclient interrupts a cell that outlives the timeout
                message = f"KeyboardInterrupt: the cell ran longer than {timeout} s (the per-cell timeout)"
            rows.append(GradeRow(student, notebook, f"(cell {i})", status, message))
    return rows


def grade_notebook(path, student: str, notebook: str, *, timeout: int = 600, fast: bool = True,
                   kernel_name: str = "python3", cwd=None) -> list[GradeRow]:
    """Execute one submitted notebook from top to bottom and return its rows (see :func:`grade`)."""
    import nbclient
    import nbformat

    from .exercises._core import RESULTS_ENV

    path = Path(path)
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:  # not JSON, not a notebook: still a row, the other students go on
        return [GradeRow(student, notebook, "(notebook)", "error", f"cannot read {path.name}: {type(e).__name__}: {e}")]
    with tempfile.TemporaryDirectory(prefix="minigpt-grade-") as tmp:
        results = Path(tmp) / "results.jsonl"
        env = dict(os.environ)
        env[RESULTS_ENV] = str(results)
        env["MINIGPT_FAST"] = "1" if fast else "0"
        client = nbclient.NotebookClient(
            nb,
            timeout=timeout,
            allow_errors=True,
            interrupt_on_timeout=True,  # a stuck cell becomes a KeyboardInterrupt row; the rest still runs
            kernel_name=kernel_name,
            resources={"metadata": {"path": str(cwd if cwd is not None else path.parent)}},
        )
        crash = None
        try:
            client.execute(env=env)
        except Exception as e:  # dead kernel (out of memory, the notebook exited), kernel that never starts
            crash = GradeRow(student, notebook, "(notebook)", "error", f"{type(e).__name__}: {e}".strip()[:1000])
        rows = _read_results(results, student, notebook)
    rows += _cell_error_rows(nb, student, notebook, timeout)
    if crash is not None:
        rows.append(crash)
    return rows


def grade(submissions_dir, out_csv, timeout: int = 600, *, fast: bool = True, kernel_name: str = "python3",
          cwd=None, progress=None) -> list[GradeRow]:
    """Run every submitted notebook and write one CSV row per student, notebook and exercise.

    Layout of ``submissions_dir``: see :func:`find_submissions`. Each notebook runs in a fresh
    kernel (``kernel_name``), cells in order with ``allow_errors=True``, in fast mode
    (``MINIGPT_FAST=1``) unless ``fast=False``, in its own folder unless ``cwd`` is given;
    ``timeout`` is seconds per cell (a cell that takes longer is interrupted and reported).
    Columns (:data:`CSV_COLUMNS`): student, notebook, exercise, status, message, where status is
    "passed", "failed", "not done" (from the checkers) or "error" (the notebook raised outside a
    checker: exercise is "(cell N)" with the exception as message, or "(notebook)" when the whole
    run broke). ``progress`` is called with ``(student, notebook)`` before each run.
    """
    submissions = find_submissions(submissions_dir)
    rows: list[GradeRow] = []
    for student, notebook, path in submissions:
        if progress is not None:
            progress(student, notebook)
        rows += grade_notebook(path, student, notebook, timeout=timeout, fast=fast, kernel_name=kernel_name, cwd=cwd)
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    return rows


# ---------------------------------------------------------------------------------------------
# Command line: `minigpt course student` and `minigpt course grade`
# ---------------------------------------------------------------------------------------------


def add_cli(subparsers) -> None:
    """Register ``course`` (with ``student`` and ``grade``) on the CLI's subparsers.

    Each leaf parser sets ``func``: the CLI calls ``args.func(args)``, which returns an exit code.
    """
    course = subparsers.add_parser("course", help="instructor tools: student versions and grading")
    sub = course.add_subparsers(dest="course_command", metavar="{student,grade}")
    sub.required = True

    p = sub.add_parser("student", help="write student versions of the notebooks (solutions replaced by stubs)")
    p.add_argument("--src", default="notebooks", help="folder of solution notebooks (default: notebooks)")
    p.add_argument("--out", default="student", help="folder to write the student versions to (default: student)")
    p.set_defaults(func=cli_student)

    p = sub.add_parser("grade", help="run submitted notebooks and write a per-student, per-exercise CSV")
    p.add_argument("submissions", metavar="SUBMISSIONS",
                   help="folder: SUBMISSIONS/<student>/<notebook>.ipynb or SUBMISSIONS/<student>__<notebook>.ipynb")
    p.add_argument("--out", default="grades.csv", help="CSV file to write (default: grades.csv)")
    p.add_argument("--timeout", type=int, default=600, help="seconds per cell before it is interrupted (default 600)")
    p.add_argument("--full", action="store_true", help="run in full mode instead of fast mode (MINIGPT_FAST=0)")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel to run the notebooks with (default python3)")
    p.set_defaults(func=cli_grade)


def cli_student(args) -> int:
    """`minigpt course student --src notebooks --out student`."""
    paths = make_student_versions(args.src, args.out)
    for p in paths:
        print(f"wrote {p}")
    print(f"{len(paths)} student notebooks in {args.out}/")
    return 0


def cli_grade(args) -> int:
    """`minigpt course grade SUBMISSIONS --out grades.csv`."""

    def progress(student: str, notebook: str) -> None:
        print(f"running {student} / {notebook} ...", flush=True)

    rows = grade(args.submissions, args.out, timeout=args.timeout, fast=not args.full, kernel_name=args.kernel,
                 progress=progress)
    per_student: dict[str, list[int]] = {}
    for r in rows:
        if r.exercise.startswith("("):
            continue
        counts = per_student.setdefault(r.student, [0, 0])
        counts[0] += r.status == "passed"
        counts[1] += 1
    for student, (passed, total) in sorted(per_student.items()):
        print(f"{student}: {passed}/{total} exercises passed")
    n_errors = sum(r.status == "error" for r in rows)
    if n_errors:
        print(f"{n_errors} error row(s): notebooks that raised outside the checkers (see the message column)")
    print(f"wrote {args.out} ({len(rows)} rows)")
    return 0
