"""``minigpt course grade``: grade submitted notebooks with the grader's own check of each exercise.

For every submission the exercise list comes from the instructor's notebook of the same name
(``--source``). Each checker cell of the submission (matched by nbgrader ``grade_id``, else by
the exercise heading) is replaced by the instructor's cell in which the checker call becomes
``report(<token>, <mode>, "NN.k", <same arguments>)`` from a fresh copy of the checkers. ``token`` is random,
chosen per cell by the grader; only a ``MINIGPT-GRADE <token> {...}`` line in that cell's own output
counts, so nothing the notebook prints or writes elsewhere can add a pass, and an exercise is checked
exactly once, at its cell. Each student's notebooks run in a private copy of their folder.

``nbformat``/``nbclient`` are imported inside functions (``import minigpt.course`` stays light).
"""

from __future__ import annotations

import ast
import csv
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .annotate import HEADING, annotate_notebook, checker_ids, strip_hidden_tests

__all__ = ["CSV_COLUMNS", "Exercise", "GradeRow", "find_submissions", "grade", "grade_student", "source_exercises"]

CSV_COLUMNS = ("student", "notebook", "exercise", "status", "message", "mode", "points", "max_points")
STATUSES = ("passed", "failed", "not done", "error", "timed out", "missing", "needs manual grading")
DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "notebooks"
_REPORT_MODULE = Path(__file__).resolve().parents[1] / "exercises" / "_graded.py"


@dataclass
class GradeRow:
    student: str
    notebook: str
    exercise: str  # "01.3 causal mask"; "(notebook)" when the submission has no instructor notebook
    status: str  # one of STATUSES
    message: str = ""
    mode: str = "full"  # "full" or "fast" (MINIGPT_FAST=1)
    points: int = 0
    max_points: int = 0


@dataclass
class Exercise:
    """One graded cell of the instructor's notebook."""

    name: str  # "01.3 causal mask" (checker) or "01.5 written answer"
    kind: str  # "check" or "written"
    grade_id: str  # nbgrader's grade_id, e.g. "ex01_3_check"
    points: int
    position: int  # index of the cell in the instructor's notebook
    source: str = ""  # the instructor's checker cell (without hidden tests)
    heading_offset: int = 0  # cells between the exercise heading and this cell (fallback matching)


@dataclass
class Outcome:
    """What running one notebook gave: per-exercise rows and errors raised outside the exercises."""

    rows: list[GradeRow]
    errors: list[str] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)  # exercise -> written answer


# ---------------------------------------------------------------------------------------------
# Submissions and the instructor's exercise list
# ---------------------------------------------------------------------------------------------


def find_submissions(submissions_dir) -> list[tuple[str, str, Path]]:
    """List ``(student, notebook, path)`` for every submitted notebook, sorted.

    Layouts (may be mixed): ``<student>/<notebook>.ipynb`` (also deeper, as nbgrader's
    ``submitted/<student>/<assignment>/<notebook>.ipynb``: the notebook is then named by its path
    below the student folder, e.g. ``ps1/01_attention_mechanism``), or ``<student>__<notebook>.ipynb``.
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
                if not any(part.startswith(".") for part in rel.parts):  # .ipynb_checkpoints and friends
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


def _heading_positions(nb) -> dict[str, int]:
    found: dict[str, int] = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            for m in HEADING.finditer(cell.source):
                found.setdefault(m.group("id"), i)
    return found


def source_exercises(nb) -> list[Exercise]:
    """The graded cells of an instructor's notebook (annotated in memory if its file is not)."""
    nb = annotate_notebook(nb)
    headings = _heading_positions(nb)
    names = checker_ids()
    out = []
    for i, cell in enumerate(nb.cells):
        meta = cell.metadata["nbgrader"]
        if not meta["grade"]:
            continue
        number = meta["grade_id"][2:].rsplit("_", 1)[0].replace("_", ".")
        offset = i - headings.get(number, i)
        if cell.cell_type == "code":
            name = next(n for n in names.values() if n.split()[0] == number)
            out.append(Exercise(name, "check", meta["grade_id"], meta["points"], i, strip_hidden_tests(cell.source),
                                offset))
        else:
            out.append(Exercise(f"{number} written answer", "written", meta["grade_id"], meta["points"], i, "", offset))
    return out


def _match(nb, ex: Exercise) -> int | None:
    """Index of the submission's cell for ``ex``: by grade_id, else by heading (None: deleted)."""
    kind = "code" if ex.kind == "check" else "markdown"
    by_id = [i for i, c in enumerate(nb.cells)
             if c.metadata.get("nbgrader", {}).get("grade_id") == ex.grade_id and c.cell_type == kind]
    if by_id:
        return by_id[0]
    if any("nbgrader" in c.metadata for c in nb.cells):
        return None  # an nbgrader notebook without this grade_id: the cell was deleted
    start = _heading_positions(nb).get(ex.name.split()[0])
    if start is None:
        return None
    if ex.kind == "written":
        i = start + ex.heading_offset
        return i if i < len(nb.cells) and nb.cells[i].cell_type == "markdown" else None
    checker = next(n for n, e in checker_ids().items() if e == ex.name)
    for i in range(start + 1, len(nb.cells)):
        cell = nb.cells[i]
        if cell.cell_type == "markdown" and HEADING.search(cell.source):
            return None
        if cell.cell_type == "code" and re.search(rf"\b{checker}\s*\(", cell.source):
            return i
    return None


# ---------------------------------------------------------------------------------------------
# The grader's cell
# ---------------------------------------------------------------------------------------------


def _offset(lines: list[str], lineno: int, col: int) -> int:
    """Character offset of an ast (lineno, UTF-8 byte column) position."""
    return sum(len(line) + 1 for line in lines[: lineno - 1]) + len(lines[lineno - 1].encode()[:col].decode())


def grader_cell(ex: Exercise, token: str, fast: bool = False) -> str:
    """The instructor's checker cell with its checker call replaced by the grader's report call."""
    source, names = ex.source, set(checker_ids())
    call = next(n for n in ast.walk(ast.parse(source))
                if isinstance(n, ast.Call) and getattr(n.func, "id", None) in names)
    lines = source.split("\n")
    assert call.end_lineno is not None and call.func.end_lineno is not None  # set by ast.parse
    assert call.end_col_offset is not None and call.func.end_col_offset is not None
    start = _offset(lines, call.lineno, call.col_offset)
    args_start = _offset(lines, call.func.end_lineno, call.func.end_col_offset)
    end = _offset(lines, call.end_lineno, call.end_col_offset)
    args = source[args_start:end].strip()[1:-1].strip()  # the text between the call's parentheses
    number, fn = ex.name.split()[0], f"_minigpt_grade_{token}"
    loader = (
        f"def {fn}(*args, **kwargs):  # the grader's check of exercise {number}\n"
        f"    import importlib.util\n"
        f"    spec = importlib.util.spec_from_file_location({fn!r}, {str(_REPORT_MODULE)!r})\n"
        f"    module = importlib.util.module_from_spec(spec)\n"
        f"    spec.loader.exec_module(module)\n"
        f"    return module.report({token!r}, {fast!r}, *args, **kwargs)\n"
    )
    return loader + source[:start] + f'{fn}("{number}"' + (f", {args})" if args else ")") + source[end:]


def _records(cell, token: str) -> list[dict]:
    """The grader records (tagged with ``token``) in the cell's own output; readable ones only."""
    text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
    found = []
    for raw in re.findall(rf"^MINIGPT-GRADE {token} (\{{.*\}})$", text, re.MULTILINE):
        try:
            rec = json.loads(raw)
        except ValueError:
            rec = {}
        found.append(rec if rec.get("status") in ("passed", "failed", "not done", "error") else {"status": "?"})
    return found


def _status(cell, token: str) -> tuple[str, str]:
    """(status, message) of an executed grader cell.

    A pass counts only if the cell then ended without an error: code that prints a forged record
    during the check and then escapes it (KeyboardInterrupt, SystemExit) gets "error", not "passed".
    """
    records, error = _records(cell, token), _error_of(cell)
    if len(records) > 1 or any(r["status"] == "?" for r in records):
        return "error", "the grader's record was tampered with (forged or unreadable lines in the checker cell)"
    if not records:
        return "error", error or "the grader's check reported nothing"
    rec = records[0]
    if rec["status"] == "passed" and error:
        return "error", f"the cell raised after the check: {error}"
    return rec["status"], str(rec.get("message", ""))


def _error_of(cell) -> str:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return f"{out.get('ename', 'Error')}: {out.get('evalue', '')}"[:1000]
    return ""


# ---------------------------------------------------------------------------------------------
# Running one notebook
# ---------------------------------------------------------------------------------------------


@dataclass
class RunOptions:
    fast: bool = False
    timeout: int = 600  # seconds per cell
    notebook_timeout: int = 3600  # seconds for the whole notebook
    kernel_name: str = "python3"

    def __post_init__(self) -> None:
        for name, flag in (("timeout", "--timeout"), ("notebook_timeout", "--notebook-timeout")):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 7 * 24 * 3600:
                raise ValueError(f"{flag} must be a whole number of seconds in [1, 604800], got {value!r}; "
                                 "a limit cannot be switched off (a student's loop would hang the grading)")


# what the grader's environment lends a student's kernel: how to find programs, libraries and the
# course's data (never the grader's credentials, tokens or other variables)
_KERNEL_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONPATH", "SYSTEMROOT", "TMPDIR",
                    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "HF_HOME", "TORCH_HOME",
                    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
# MINIGPT_OUT_DIR too: a student's notebooks then write to ../out inside their private copy, never to a
# folder the grader (or another student) shares
_KERNEL_ENV_DROP = ("MINIGPT_RESULTS_FILE", "MINIGPT_DEBUG", "MINIGPT_OUT_DIR")


def kernel_env(workroot: Path, fast: bool) -> dict[str, str]:
    """The kernel's environment, built from nothing: PATH, locale, PYTHONPATH, thread and device settings,
    the course's MINIGPT_* settings, offline switches; a private HOME and caches; the grader's model
    caches (HF_HOME, TORCH_HOME) read as they are. Nothing else of the grader's environment."""
    env = {k: v for k, v in os.environ.items()
           if k in _KERNEL_ENV_KEEP or (k.startswith("MINIGPT_") and k not in _KERNEL_ENV_DROP)}
    env.setdefault("PATH", os.defpath)
    env.setdefault("LANG", "C.UTF-8")
    home = Path.home()
    env.setdefault("HF_HOME", str(home / ".cache" / "huggingface"))
    env.setdefault("TORCH_HOME", str(home / ".cache" / "torch"))
    private = (("HOME", "home"), ("MPLCONFIGDIR", "mpl"), ("IPYTHONDIR", "ipython"), ("XDG_CACHE_HOME", "cache"))
    for name, sub in private:
        (workroot / sub).mkdir(parents=True, exist_ok=True)
        env[name] = str(workroot / sub)
    env.update(MINIGPT_FAST="1" if fast else "0", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    return env


def _kill_kernel(client) -> None:
    """Kill the kernel and everything it started (its process group): a cell past its limit may swallow
    the interrupt (`except KeyboardInterrupt: pass`), so it is never asked, only ended."""
    from nbclient.util import run_sync

    km = getattr(client, "km", None)
    if km is None:
        return
    try:
        run_sync(km.kill_kernel)()  # SIGKILL to the kernel's process group where the OS has them
    except Exception:  # already dead, or no process to signal
        pass


def _execute(nb, cwd: Path, env: dict, opts: RunOptions) -> tuple[int, str, str]:
    """Run the cells in order; return (index of the first cell not run to its end, status, why).

    All cells ran: ``(len(cells), "", "")``; status is "timed out" or "error" (dead kernel, no kernel).
    """
    import nbclient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    client = nbclient.NotebookClient(nb, timeout=opts.timeout, allow_errors=True, interrupt_on_timeout=False,
                                     kernel_name=opts.kernel_name, resources={"metadata": {"path": str(cwd)}})
    deadline = time.monotonic() + opts.notebook_timeout
    client.reset_execution_trackers()
    try:
        with client.setup_kernel(env=env):
            for i, cell in enumerate(nb.cells):
                left = deadline - time.monotonic()
                whole = f"the notebook ran longer than {opts.notebook_timeout} s (--notebook-timeout)"
                if left <= 0:
                    return i, "timed out", whole
                client.timeout = max(1, int(min(opts.timeout, left)))
                try:
                    client.execute_cell(cell, i)
                except CellTimeoutError:
                    _kill_kernel(client)
                    cell_only = f"cell {i + 1} ran longer than {client.timeout} s (--timeout)"
                    return i, "timed out", cell_only if client.timeout == opts.timeout else whole
                except DeadKernelError as e:
                    return i, "error", f"the kernel died in cell {i + 1}: {e}"[:500]
    except Exception as e:  # a kernel that never starts
        return 0, "error", f"{type(e).__name__}: {e}"[:500]
    return len(nb.cells), "", ""


def _rows_for(student: str, notebook: str, exercises: list[Exercise], nb, matched: dict, tokens: dict,
              stop: tuple[int, str, str], mode: str) -> Outcome:
    """One row per exercise from the grader's records in the executed ``nb`` (see the module docstring)."""
    out = Outcome([])
    stopped, stop_status, why = stop
    for ex in exercises:
        row = GradeRow(student, notebook, ex.name, "missing", "", mode, 0, ex.points)
        i = matched.get(ex.grade_id)
        if i is None:
            row.message = "the exercise's cell is not in the submission (deleted?)"
        elif ex.kind == "written":
            text = nb.cells[i].source.strip()
            out.answers[ex.name] = text
            blank = text in ("", "YOUR ANSWER HERE")
            row.status = "not done" if blank else "needs manual grading"
            row.message = "no answer written" if blank else f"{len(text)} characters written"
        elif i >= stopped:
            row.status, row.message = stop_status, why
        else:
            row.status, row.message = _status(nb.cells[i], tokens[ex.grade_id])
        row.points = ex.points if row.status == "passed" else 0
        out.rows.append(row)
    graded = set(matched.values())
    for i, cell in enumerate(nb.cells[:stopped]):
        if cell.cell_type == "code" and i not in graded and _error_of(cell):
            out.errors.append(f"cell {i + 1}: {_error_of(cell)}")
    if why:
        out.errors.append(why)
    return out


def grade_notebook(path: Path, student: str, notebook: str, source: Path, workroot: Path,
                   opts: RunOptions) -> Outcome:
    """Grade one submitted notebook (already copied into ``workroot``) against the instructor's ``source``."""
    import nbformat

    mode = "fast" if opts.fast else "full"
    try:
        exercises = source_exercises(nbformat.read(source, as_version=4))
    except ValueError as e:  # AnnotateError: the instructor's notebook breaks a convention
        return Outcome([GradeRow(student, notebook, "(notebook)", "error", f"instructor notebook: {e}", mode)])
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:  # not JSON, not a notebook: every exercise is an error row
        msg = f"cannot read {path.name}: {type(e).__name__}: {e}"[:500]
        return Outcome([GradeRow(student, notebook, ex.name, "error", msg, mode, 0, ex.points) for ex in exercises])
    matched = {ex.grade_id: _match(nb, ex) for ex in exercises}
    tokens = {ex.grade_id: secrets.token_hex(16) for ex in exercises if ex.kind == "check"}
    for ex in exercises:
        i = matched[ex.grade_id]
        if ex.kind == "check" and i is not None:
            nb.cells[i].source = grader_cell(ex, tokens[ex.grade_id], opts.fast)
    stop = _execute(nb, path.parent, kernel_env(workroot, opts.fast), opts)
    return _rows_for(student, notebook, exercises, nb, matched, tokens, stop, mode)


def _copy_submission(root: Path, student: str, paths: list[Path], workroot: Path) -> list[Path]:
    """Copy a student's folder (or flat files) to ``workroot/<student>``; return the copied notebooks."""
    dest = workroot / "submission" / student
    folder = root / student
    if folder.is_dir():
        shutil.copytree(folder, dest, symlinks=True)
    copied = []
    for p in paths:
        if folder.is_dir() and p.is_relative_to(folder):
            copied.append(dest / p.relative_to(folder))
        else:
            dest.mkdir(parents=True, exist_ok=True)
            copied.append(Path(shutil.copy(p, dest / p.name.partition("__")[2])))
    return copied


def grade_student(root, student: str, items: list[tuple[str, Path]], source_dir, opts: RunOptions) -> list[Outcome]:
    """Grade one student's notebooks, in order, in a private temporary copy of their folder."""
    root, source_dir = Path(root), Path(source_dir)
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="minigpt-grade-") as tmp:
        workroot = Path(tmp)
        copies = _copy_submission(root, student, [p for _, p in items], workroot)
        for (notebook, _), copy in zip(items, copies):
            source = source_dir / f"{Path(notebook).name}.ipynb"
            if not source.is_file():
                msg = f"no instructor notebook {source.name} in {source_dir} (--source)"
                outcomes.append(Outcome([GradeRow(student, notebook, "(notebook)", "error", msg,
                                                  "fast" if opts.fast else "full")]))
                continue
            outcomes.append(grade_notebook(copy, student, notebook, source, workroot, opts))
    return outcomes


# ---------------------------------------------------------------------------------------------
# All students: rows, summary, reports
# ---------------------------------------------------------------------------------------------


def grade(submissions_dir, out_csv, *, source_dir=DEFAULT_SOURCE, opts: RunOptions | None = None, jobs: int = 1,
          progress: Callable[[str], None] | None = None) -> list[GradeRow]:
    """Grade every submission; write ``out_csv`` (one row per student and exercise), the summary CSV
    ``<out>_summary.csv`` and one report per student in ``<out dir>/reports/``; return the rows."""
    opts = opts or RunOptions()
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs must be a whole number >= 1, got {jobs!r}")
    check_output_csv(out_csv)  # before hours of grading, not after
    by_student: dict[str, list[tuple[str, Path]]] = {}
    for student, notebook, path in find_submissions(submissions_dir):
        by_student.setdefault(student, []).append((notebook, path))
    results: dict[str, list[Outcome]] = {}
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {s: pool.submit(grade_student, submissions_dir, s, items, source_dir, opts)
                       for s, items in by_student.items()}
            for student, fut in futures.items():
                results[student] = fut.result()
                if progress:
                    progress(student)
    else:
        for student, items in by_student.items():
            results[student] = grade_student(submissions_dir, student, items, source_dir, opts)
            if progress:
                progress(student)
    rows = [r for s in sorted(results) for o in results[s] for r in o.rows]
    out_csv = Path(out_csv)
    _write_csv(out_csv, rows)
    _write_summary(out_csv.with_name(f"{out_csv.stem}_summary.csv"), rows)
    for student in sorted(results):
        _write_report(out_csv.parent / "reports" / f"{student}.md", student, results[student])
    return rows


def check_output_csv(out_csv) -> Path:
    """Refuse an --out that cannot take the grades (a folder, a file in the way, no write permission)."""
    out = Path(out_csv)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a CSV file name such as {out / 'grades.csv'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.parent / f".{out.name}.{os.getpid()}.probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"--out {out} cannot be written ({e.strerror or e}); choose another path") from e
    return out


def _write_csv(path: Path, rows: list[GradeRow]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(GradeRow)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)


def summarize(rows: list[GradeRow]) -> dict[str, dict[str, list[int]]]:
    """``{student: {notebook: [points, max autograded, manual max]}}``."""
    out: dict[str, dict[str, list[int]]] = {}
    for r in rows:
        cell = out.setdefault(r.student, {}).setdefault(r.notebook, [0, 0, 0])
        if r.status == "needs manual grading" or r.exercise.endswith("written answer"):
            cell[2] += r.max_points
        else:
            cell[0] += r.points
            cell[1] += r.max_points
    return out


def _write_summary(path: Path, rows: list[GradeRow]) -> None:
    summary = summarize(rows)
    notebooks = sorted({nb for per in summary.values() for nb in per})
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["student", "points", "max_points", "manual_max_points", *notebooks])
        for student, per in sorted(summary.items()):
            total = [sum(v[k] for v in per.values()) for k in range(3)]
            writer.writerow([student, *total, *(f"{per[n][0]}/{per[n][1]}" if n in per else "" for n in notebooks)])


def _write_report(path: Path, student: str, outcomes: list[Outcome]) -> None:
    lines = [f"# Grading report: {student}", ""]
    for o in outcomes:
        if not o.rows:
            continue
        nb, mode = o.rows[0].notebook, o.rows[0].mode
        got = sum(r.points for r in o.rows if not r.exercise.endswith("written answer"))
        top = sum(r.max_points for r in o.rows if not r.exercise.endswith("written answer"))
        lines += [f"## {nb} ({mode} mode): {got}/{top} autograded points", "",
                  "| exercise | status | points | message |", "| --- | --- | --- | --- |"]
        for r in o.rows:
            msg = r.message.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {r.exercise} | {r.status} | {r.points}/{r.max_points} | {msg} |")
        for name, text in o.answers.items():
            lines += ["", f"### {name}", "", *(f"> {t}" for t in text.splitlines() or [""])]
        if o.errors:
            lines += ["", "Errors outside the graded cells:", *(f"- {e}" for e in o.errors)]
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
