"""Instructor tools: student versions, grading, and the committed notebooks' cleanliness (a CI check)."""

import argparse
import ast
import copy
import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

from minigpt import course
from minigpt.course import SolutionMarkerError, grading, make_student_versions, strip_solutions
from minigpt.course.annotate import (
    STRICT_HEADING,
    AnnotateError,
    annotate_notebook,
    annotate_paths,
    checker_call,
    hidden_region,
)
from minigpt.exercises import ExerciseNotDone, graded

REPO = Path(__file__).resolve().parents[1]
REPO_NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))

CHECKER_CELL = '''from minigpt.exercises import checker, expect

@checker("99.1 add")
def check_add(fn):
    expect(fn(2, 3) == 5, "add(2, 3) should be 5: did you subtract?")
    expect(fn(-1, 1) == 0, "add(-1, 1) should be 0")'''

SCAFFOLD_CELL = '''def my_add(a, b):
    """Return a + b."""
    # HINT: use the "+" operator
    ### BEGIN SOLUTION
    total = a + b
    return total
    ### END SOLUTION'''


def _code(source, count=None, outputs=(), **metadata):
    cell = nbformat.v4.new_code_cell(source, metadata=metadata)
    cell.execution_count = count
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=t) for t in outputs]
    return cell


def synthetic_notebook(scaffold=SCAFFOLD_CELL, extra_cells=()):
    """A notebook as an author leaves it: outputs, counts and editor metadata still in it."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "widgets": {"state": {}},
    }
    nb.cells = [
        nbformat.v4.new_markdown_cell("# 99 · A test notebook\n\nWrite `my_add`."),
        _code(CHECKER_CELL, count=1, ExecuteTime={"end": "x"}),
        nbformat.v4.new_markdown_cell("Why?\n### BEGIN SOLUTION\nBecause 42.\n### END SOLUTION"),
        _code(scaffold, count=2, outputs=["old output"], collapsed=True, tags=["exercise"]),
        *extra_cells,
        _code("result = check_add(my_add)", count=3, outputs=["[x] passed"]),
    ]
    return nb


def write_nb(nb, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


# ----------------------------------------------------------------------------- strip_solutions


def test_code_region_becomes_stub_with_hint_at_marker_indentation():
    out, n = strip_solutions(SCAFFOLD_CELL)
    assert n == 1
    assert out.splitlines() == [
        "def my_add(a, b):",
        '    """Return a + b."""',
        '    # HINT: use the "+" operator',
        '    raise NotImplementedError("use the \\"+\\" operator")',
    ]
    ns = {}
    exec(out, ns)  # the stub is valid Python and raises with the hint
    with pytest.raises(NotImplementedError, match=re.escape('use the "+" operator')):
        ns["my_add"](1, 2)


def test_default_hint_and_several_regions_and_deeper_indent():
    src = "class A:\n    def f(self):\n        ### BEGIN SOLUTION\n        return 1\n        ### END SOLUTION\n\n" \
          "def g():\n    x = 1\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n"
    out, n = strip_solutions(src)
    assert n == 2
    assert '        raise NotImplementedError("write your solution here")' in out.splitlines()
    assert '    raise NotImplementedError("write your solution here")' in out.splitlines()
    assert "return 1" not in out and "return x" not in out
    assert "    x = 1" in out  # code outside the markers is kept


def test_markdown_region_becomes_your_answer_here():
    out, n = strip_solutions("Explain.\n### BEGIN SOLUTION\nBecause *42*.\n### END SOLUTION\nMore.", "markdown")
    assert (out, n) == ("Explain.\nYOUR ANSWER HERE\nMore.", 1)


@pytest.mark.parametrize(
    "src, words",
    [
        ("def f():\n    ### BEGIN SOLUTION\n    return 1\n", "line 2 has no matching `### END SOLUTION`"),
        ("def f():\n    ### BEGIN SOLUTION\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\n",
         "line 3 is nested inside the region opened on line 2"),
        ("def f():\n    return 1\n    ### END SOLUTION\n", "line 3 has no `### BEGIN SOLUTION` before it"),
    ],
)
def test_malformed_markers_are_clear_errors(src, words):
    with pytest.raises(SolutionMarkerError, match=re.escape(words)) as e:
        strip_solutions(src, where="nb.ipynb, cell 4 (code)")
    assert str(e.value).startswith("nb.ipynb, cell 4 (code)")


def test_malformed_notebook_error_names_notebook_and_cell(tmp_path):
    nb = synthetic_notebook(scaffold="def my_add(a, b):\n    ### BEGIN SOLUTION\n    return a + b\n")
    write_nb(nb, tmp_path / "src" / "08_broken.ipynb")
    write_nb(synthetic_notebook(), tmp_path / "src" / "01_fine.ipynb")
    with pytest.raises(SolutionMarkerError, match=r"08_broken\.ipynb, cell 4 \(code\)"):
        make_student_versions(tmp_path / "src", tmp_path / "student")
    assert not (tmp_path / "student").exists()  # nothing written when one notebook is broken


def test_top_level_solution_is_refused(tmp_path):
    nb = synthetic_notebook(scaffold="### BEGIN SOLUTION\nmy_add = lambda a, b: a + b\n### END SOLUTION")
    write_nb(nb, tmp_path / "src" / "01.ipynb")
    with pytest.raises(SolutionMarkerError, match="not inside a function"):
        make_student_versions(tmp_path / "src", tmp_path / "student")


def test_missing_or_same_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no notebooks"):
        make_student_versions(tmp_path, tmp_path / "out")
    write_nb(synthetic_notebook(), tmp_path / "a.ipynb")
    with pytest.raises(ValueError, match="overwrite the solutions"):
        make_student_versions(tmp_path, tmp_path)


# ----------------------------------------------------------------------------- student versions


def test_student_version_has_stub_no_outputs_clean_metadata(tmp_path):
    write_nb(synthetic_notebook(), tmp_path / "src" / "99_test.ipynb")
    paths = make_student_versions(tmp_path / "src", tmp_path / "student")
    assert paths == [tmp_path / "student" / "99_test.ipynb"]
    nb = nbformat.read(paths[0], as_version=4)
    nbformat.validate(nb)
    scaffold = nb.cells[3].source
    assert 'raise NotImplementedError("use the \\"+\\" operator")' in scaffold
    assert "total = a + b" not in scaffold and "BEGIN SOLUTION" not in scaffold
    assert nb.cells[2].source == "Why?\nYOUR ANSWER HERE"
    assert nb.cells[1].source == CHECKER_CELL  # cells without markers are untouched
    for i, cell in enumerate(nb.cells):
        assert cell.id == str(i)
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    assert nb.cells[3].metadata == {"tags": ["exercise"]}
    assert nb.cells[1].metadata == {}
    assert set(nb.metadata) == {"kernelspec", "language_info"}
    nbstripout = _nbstripout()
    if nbstripout:
        assert subprocess.run([*nbstripout, "--verify", str(paths[0])]).returncode == 0


def test_cli_student_writes_the_folder(tmp_path, capsys):
    write_nb(synthetic_notebook(), tmp_path / "src" / "99_test.ipynb")
    parser = argparse.ArgumentParser(prog="minigpt")
    course.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["course", "student", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "s")])
    assert args.func(args) == 0
    assert (tmp_path / "s" / "99_test.ipynb").is_file()
    assert "1 student notebooks" in capsys.readouterr().out
    args = parser.parse_args(["course", "grade", "subs", "--out", "g.csv"])
    assert (args.func, args.submissions, args.out, args.timeout) == (course.cli_grade, "subs", "g.csv", 600)
    assert (args.fast, args.jobs, args.source, args.notebook_timeout) == (False, 1, None, 3600)  # full mode by default
    args = parser.parse_args(["course", "grade", "subs", "--fast", "-j", "4", "--source", "nbs", "--timeout", "9"])
    assert (args.fast, args.jobs, args.source, args.timeout) == (True, 4, "nbs", 9)


@pytest.mark.parametrize("module", ["course/__init__", "course/annotate", "course/grading", "exercises/_graded"])
def test_import_stays_light(module):
    # the CLI imports minigpt.course at start-up: nbformat/nbclient/nbgrader are imported inside functions only
    tree = ast.parse((REPO / "minigpt" / f"{module}.py").read_text())
    top = [a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names]
    top += [n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module]
    assert top and not {m.split(".")[0] for m in top} & {"nbformat", "nbclient", "nbgrader", "torch"}


# ----------------------------------------------------------------------------- running and grading


def test_find_submissions_layouts_and_bad_names(tmp_path):
    for p in ["ann/01_a.ipynb", "ann/ps1/02_b.ipynb", "ben__01_a.ipynb", "notes.txt"]:
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p).write_text("{}")
    found = [(s, n) for s, n, _ in course.find_submissions(tmp_path)]
    assert found == [("ann", "01_a"), ("ann", "ps1/02_b"), ("ben", "01_a")]
    (tmp_path / "nobody.ipynb").write_text("{}")
    with pytest.raises(ValueError, match="<student>__<notebook>.ipynb"):
        course.find_submissions(tmp_path)


# ----------------------------------------------------------------------------- nbgrader metadata (annotate)

SCORES_SOLUTION = "    return q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))"
MASK_SOLUTION = "    return torch.tril(torch.ones(T, T, dtype=torch.bool))"
ANSWER_KEY = "**Answer key (instructor).** Position j > i is the future: 10 of the 16 entries stay."


def graded_source():
    """An instructor's notebook following the conventions: two checked exercises and one written answer."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    md, code = nbformat.v4.new_markdown_cell, _code
    nb.cells = [
        md("# 01 · A test notebook"),
        code("import math\nfrom pathlib import Path\n\nimport torch"),
        md("### Exercise 01.1 (easy, ~5 min) · attention scores\nWrite `my_scores`."),
        code(f"def my_scores(q, k):\n    # HINT: q @ k^T / sqrt(d)\n    ### BEGIN SOLUTION\n{SCORES_SOLUTION}\n"
             f"    ### END SOLUTION"),
        code("from minigpt.exercises import check_attention_scores\ncheck_attention_scores(my_scores)"),
        md("### Exercise 01.3 (hard, ~10 min) · causal mask\nWrite `my_causal_mask`, then write your answer "
           "in the cell below."),
        code(f"def my_causal_mask(T):\n    ### BEGIN SOLUTION\n{MASK_SOLUTION}\n    ### END SOLUTION"),
        code("from minigpt.exercises import check_causal_mask\nok = check_causal_mask(my_causal_mask)"),
        md(f"### BEGIN SOLUTION\n{ANSWER_KEY}\n### END SOLUTION"),
    ]
    return nb


def test_annotate_gives_each_kind_of_cell_its_metadata_and_is_idempotent():
    nb = annotate_notebook(graded_source())
    meta = [c.metadata["nbgrader"] for c in nb.cells]
    assert all(m["schema_version"] == 3 for m in meta)
    assert [m["grade_id"] for m in meta] == ["cell_0", "cell_1", "cell_2", "ex01_1_code", "ex01_1_check", "cell_5",
                                            "ex01_3_code", "ex01_3_check", "ex01_3_written"]
    assert meta[3] == {"grade": False, "grade_id": "ex01_1_code", "locked": False, "schema_version": 3,
                       "solution": True, "task": False}
    assert (meta[4]["grade"], meta[4]["solution"], meta[4]["locked"], meta[4]["points"]) == (True, False, True, 1)
    assert meta[7]["points"] == 3  # hard
    assert (meta[8]["grade"], meta[8]["solution"], meta[8]["locked"], meta[8]["points"]) == (True, True, False, 2)
    assert all(m["locked"] and not m["grade"] for m in (meta[0], meta[1], meta[2], meta[5]))
    assert nb.cells[7].source == (
        "from minigpt.exercises import check_causal_mask\nok = check_causal_mask(my_causal_mask)\n\n"
        "### BEGIN HIDDEN TESTS\nimport importlib, sys\n"
        'sys.modules.pop("minigpt.exercises._graded", None)\n'
        'graded = importlib.import_module("minigpt.exercises._graded").graded\n'
        'graded("01.3", my_causal_mask)\n### END HIDDEN TESTS'
    )
    again = annotate_notebook(nb)
    assert [(c.source, c.metadata) for c in again.cells] == [(c.source, c.metadata) for c in nb.cells]


def test_hidden_test_call_keeps_every_argument():
    _, exercise, args = checker_call("check_causal_mask(f, 3, size=SIZE, cap=0.5 if FAST else 0.9, **extra)")
    assert exercise == "01.3 causal mask"
    assert hidden_region(exercise, args).splitlines()[4] == (
        'graded("01.3", f, 3, size=SIZE, cap=0.5 if FAST else 0.9, **extra)')


@pytest.mark.parametrize("change, words", [
    (lambda nb: nb.cells.pop(5), "checks exercise 01.3 but the notebook has no"),
    (lambda nb: setattr(nb.cells[2], "source", "Write `my_scores`."), "before any `### Exercise"),
    (lambda nb: setattr(nb.cells[5], "source", "### Exercise 01.3 · mask"), "does not say easy, medium or hard"),
])
def test_annotate_errors_name_the_cell_and_the_fix(change, words):
    nb = graded_source()
    change(nb)
    with pytest.raises(AnnotateError, match=re.escape(words)) as e:
        annotate_notebook(nb, "nb.ipynb")
    assert str(e.value).startswith("nb.ipynb, cell ")


def test_cli_annotate_check_fails_on_stale_metadata_then_passes(tmp_path, capsys):
    path = write_nb(graded_source(), tmp_path / "01_test.ipynb")
    parser = argparse.ArgumentParser(prog="minigpt")
    course.add_cli(parser.add_subparsers(dest="command"))
    run = lambda *argv: (lambda a: a.func(a))(parser.parse_args(["course", "annotate", *argv]))  # noqa: E731
    assert run("--check", str(path)) == 1
    assert "run: minigpt course annotate" in capsys.readouterr().out
    assert run(str(path)) == 0 and run("--check", str(path)) == 0
    nb = nbformat.read(path, as_version=4)
    nb.cells[4].source = "from minigpt.exercises import check_attention_scores\ncheck_attention_scores(other)"
    nbformat.write(nb, path)
    assert run("--check", str(path)) == 1  # hidden tests no longer call what the visible call checks


def test_student_version_drops_hidden_tests_and_keeps_nbgrader_metadata(tmp_path):
    write_nb(annotate_notebook(graded_source()), tmp_path / "src" / "01_test.ipynb")
    (path,) = make_student_versions(tmp_path / "src", tmp_path / "student")
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[7].source == ("from minigpt.exercises import check_causal_mask\n"
                                  "ok = check_causal_mask(my_causal_mask)")
    assert nb.cells[8].source == "YOUR ANSWER HERE"
    assert nb.cells[7].metadata["nbgrader"]["grade_id"] == "ex01_3_check"
    assert "Answer key" not in path.read_text()


# ----------------------------------------------------------------------------- graded() and the grader's cell


def _mask(T):
    return torch.tril(torch.ones(T, T, dtype=torch.bool))


def test_graded_raises_unless_passed_and_ignores_monkeypatching(monkeypatch):
    import minigpt.exercises as exercises
    from minigpt.exercises import _core, nb01

    assert graded("01.3", _mask) is None
    with pytest.raises(ExerciseNotDone, match="not done"):
        graded("01.3", lambda T: (_ for _ in ()).throw(NotImplementedError("hint")))
    wrong = lambda T: torch.ones(T, T, dtype=torch.bool)  # noqa: E731
    fake = lambda fn: exercises.CheckResult("01.3 causal mask", "passed")  # noqa: E731
    for owner in (exercises, nb01):
        monkeypatch.setattr(owner, "check_causal_mask", fake)
    monkeypatch.setattr(_core, "expect", lambda cond, msg: None)
    monkeypatch.setattr(nb01, "expect", lambda cond, msg: None)
    with pytest.raises(AssertionError, match="see the future"):
        graded("01.3", wrong)
    from minigpt.exercises import _graded

    monkeypatch.setattr(exercises, "graded", lambda *args: None)  # the hidden tests do not use these names
    monkeypatch.setattr(_graded, "graded", lambda *args: None)
    monkeypatch.setitem(sys.modules, "minigpt.exercises._graded", _graded)
    code = hidden_region("01.3 causal mask", ["wrong"]).split("\n", 1)[1].rsplit("\n", 1)[0]
    with pytest.raises(AssertionError, match="see the future"):
        exec(code, {"wrong": wrong})


def test_grader_cell_replaces_the_call_and_reads_only_its_own_token():
    ex = next(e for e in grading.source_exercises(graded_source()) if e.grade_id == "ex01_3_check")
    cell = grading.grader_cell(ex, "a" * 32)
    compile(cell, "cell", "exec")
    assert 'ok = _minigpt_grade_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa("01.3", my_causal_mask)' in cell
    assert "check_causal_mask(" not in cell and "HIDDEN" not in cell

    def out(*lines):
        return nbformat.v4.new_code_cell(outputs=[nbformat.v4.new_output("stream", name="stdout", text=t)
                                                  for t in lines])

    line = lambda token, status: f'MINIGPT-GRADE {token} {{"exercise": "01.3", "status": "{status}"}}\n'  # noqa: E731
    assert grading._status(out(line("a" * 32, "failed")), "a" * 32)[0] == "failed"
    assert grading._status(out(line("b" * 32, "passed")), "a" * 32)[0] == "error"  # someone else's token
    two = out(line("a" * 32, "failed"), line("a" * 32, "passed"))
    assert grading._status(two, "a" * 32) == ("error", "the grader's record was tampered with (forged or "
                                              "unreadable lines in the checker cell)")
    escaped = out(line("a" * 32, "passed"))  # printed from inside the check, which then never returned
    escaped.outputs.append(nbformat.v4.new_output("error", ename="KeyboardInterrupt", evalue="", traceback=[]))
    assert grading._status(escaped, "a" * 32) == ("error", "the cell raised after the check: KeyboardInterrupt: ")


# ----------------------------------------------------------------------------- grading submissions (kernels)

FORGERY_CELL = '''import json, os
import minigpt.exercises as E, minigpt.exercises._core as C, minigpt.exercises.nb01 as N
from minigpt.exercises import CheckResult
fake = lambda fn, *a, **k: CheckResult("01.3 causal mask", "passed")
check_causal_mask = E.check_causal_mask = N.check_causal_mask = fake
C.expect = N.expect = lambda cond, msg: None
print('MINIGPT-GRADE 0123456789abcdef {"exercise": "01.3 causal mask", "status": "passed", "message": ""}')
with open(os.environ.get("MINIGPT_RESULTS_FILE") or "results.jsonl", "a") as f:
    f.write(json.dumps({"exercise": "01.3 causal mask", "status": "passed", "message": ""}) + "\\n")
Path("../out").mkdir(exist_ok=True)
Path("../out/mallory.txt").write_text("mallory was here")
from minigpt.exercises import check_attention_scores
check_attention_scores(my_scores), check_attention_scores(my_scores), check_causal_mask(my_causal_mask)'''


TOKEN_THIEF = '''import sys
_stream = sys.stdout  # the kernel's stream: what it writes during the grader's cell lands in that cell

def my_causal_mask(T):
    import builtins
    for name in list(globals()):
        if name.startswith("_minigpt_grade_"):  # the grader's function, its token in the name
            token = name.removeprefix("_minigpt_grade_")
            _stream.write(f'MINIGPT-GRADE {token} {{"exercise": "01.3", "status": "passed", "message": ""}}\\n')
            builtins.print = lambda *args, **kwargs: None  # and silence the real record
    return torch.ones(T, T, dtype=torch.bool)'''


def _submission(student_nb, solutions: dict, edits=None):
    """The student version with the given grade_ids' cells replaced by the instructor's and ``edits``."""
    nb = copy.deepcopy(student_nb)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in solutions:
            cell.source = solutions[gid]
    for fn in edits or ():
        fn(nb)
    return nb


def _grading_class(tmp_path):
    source = annotate_notebook(graded_source())
    write_nb(source, tmp_path / "src" / "01_test.ipynb")
    (stub,) = make_student_versions(tmp_path / "src", tmp_path / "student")
    student = nbformat.read(stub, as_version=4)
    sol = {c.metadata["nbgrader"]["grade_id"]: c.source for c in source.cells}
    right = {k: v for k, v in sol.items() if k.endswith("_code")}
    right["ex01_3_written"] = "Everything above the diagonal is the future, so it is masked out."
    at = lambda i, src: (lambda nb: nb.cells.insert(i, nbformat.v4.new_code_cell(src)))  # noqa: E731

    def no_metadata(nb):  # an old student version: matched by the exercise headings instead
        for cell in nb.cells:
            cell.metadata.pop("nbgrader", None)

    oscar_mask = right["ex01_3_code"].replace(
        "    return", '    assert not Path("../out/mallory.txt").exists(), "I can see mallory\'s files"\n    return')
    subs = {
        "alice": _submission(student, right, [no_metadata]),
        "bob": student,
        "erin": _submission(student, right, [lambda nb: nb.cells.pop(7)]),  # deleted the 01.3 checker cell
        "mallory": _submission(student, {**right, "ex01_3_code": right["ex01_3_code"].replace("tril", "triu")},
                               [at(7, FORGERY_CELL)]),
        "oscar": _submission(student, {**right, "ex01_3_code": oscar_mask}),
        "tim": _submission(student, right, [at(5, "while True:\n    pass")]),
        "trudy": _submission(student, {**right, "ex01_3_code": TOKEN_THIEF}),
    }
    for name, nb in subs.items():
        write_nb(nb, tmp_path / "subs" / name / "ps1" / "01_test.ipynb")
    return tmp_path / "subs", tmp_path / "src"


def _table(rows):
    return {(r.student, r.exercise): (r.status, r.points) for r in rows}


@pytest.mark.slow
def test_grade_counts_only_the_graders_own_check(tmp_path):
    subs, src = _grading_class(tmp_path)
    opts = grading.RunOptions(fast=True, timeout=20)  # tim's `while True` costs 20 s
    out = tmp_path / "grades" / "grades.csv"
    rows = course.grade(subs, out, source_dir=src, opts=opts, jobs=3)
    table = _table(rows)
    assert len(rows) == 7 * 3  # one row per student and exercise, whatever the notebook printed or called
    assert table[("alice", "01.1 attention scores")] == ("passed", 1)  # matched by heading (no metadata)
    assert table[("alice", "01.3 causal mask")] == ("passed", 3)
    assert table[("alice", "01.3 written answer")] == ("needs manual grading", 0)
    assert {table[("bob", e)] for e in ("01.1 attention scores", "01.3 causal mask", "01.3 written answer")} == {
        ("not done", 0)}
    assert table[("erin", "01.3 causal mask")] == ("missing", 0)
    assert table[("mallory", "01.1 attention scores")] == ("passed", 1)  # called three times, counted once
    assert table[("mallory", "01.3 causal mask")] == ("failed", 0)  # forged line, results file, rebinding: no pass
    assert table[("oscar", "01.3 causal mask")] == ("passed", 3)  # mallory's ../out is not oscar's
    assert table[("tim", "01.1 attention scores")] == ("passed", 1)
    assert table[("tim", "01.3 causal mask")][0] == "timed out"
    assert table[("trudy", "01.3 causal mask")] == ("error", 0)  # a stolen token gives no pass
    assert "tampered" in next(r.message for r in rows if r.student == "trudy" and r.exercise == "01.3 causal mask")
    assert {r.mode for r in rows} == {"fast"}
    with open(out.with_name("grades_summary.csv"), newline="") as f:
        summary = {r["student"]: r for r in csv.DictReader(f)}
    assert (summary["alice"]["points"], summary["alice"]["max_points"], summary["alice"]["ps1/01_test"]) == (
        "4", "4", "4/4")
    assert summary["mallory"]["points"] == "1" and summary["alice"]["manual_max_points"] == "2"
    report = (out.parent / "reports" / "alice.md").read_text()
    assert "Everything above the diagonal" in report and "| 01.3 causal mask | passed | 3/3 |" in report
    assert "upper triangle" in (out.parent / "reports" / "mallory.md").read_text()
    for name in ("erin", "oscar", "tim", "trudy"):  # -j 1 on the others: the same rows
        shutil.rmtree(subs / name)
    sequential = course.grade(subs, tmp_path / "seq" / "grades.csv", source_dir=src, opts=opts, jobs=1)
    assert _table(sequential) == {k: v for k, v in table.items() if k[0] in ("alice", "bob", "mallory")}


@pytest.mark.slow
def test_notebook_timeout_stops_the_notebook(tmp_path):
    source = annotate_notebook(graded_source())
    write_nb(source, tmp_path / "src" / "01_test.ipynb")
    slow = copy.deepcopy(source)
    for _ in range(20):  # each cell is well under the per-cell timeout; together they are not
        slow.cells.insert(5, nbformat.v4.new_code_cell("import time\ntime.sleep(2)"))
    write_nb(slow, tmp_path / "subs" / "sam" / "01_test.ipynb")
    opts = grading.RunOptions(fast=True, timeout=600, notebook_timeout=25)
    rows = course.grade(tmp_path / "subs", tmp_path / "g.csv", source_dir=tmp_path / "src", opts=opts)
    table = {r.exercise: (r.status, r.message) for r in rows}
    assert table["01.1 attention scores"][0] == "passed"
    assert table["01.3 causal mask"] == ("timed out", "the notebook ran longer than 25 s (--notebook-timeout)")


def test_unreadable_submission_and_unknown_notebook_are_error_rows(tmp_path):
    write_nb(annotate_notebook(graded_source()), tmp_path / "src" / "01_test.ipynb")
    (tmp_path / "subs" / "dan").mkdir(parents=True)
    (tmp_path / "subs" / "dan" / "01_test.ipynb").write_text("not json")
    (tmp_path / "subs" / "dan" / "07_other.ipynb").write_text("{}")
    broken = graded_source()
    broken.cells.pop(2)  # a scaffold before any exercise heading
    write_nb(broken, tmp_path / "src" / "02_broken.ipynb")
    write_nb(broken, tmp_path / "subs" / "dan" / "02_broken.ipynb")
    rows = course.grade(tmp_path / "subs", tmp_path / "g.csv", source_dir=tmp_path / "src")
    assert [(r.notebook, r.exercise, r.status) for r in rows] == [
        ("01_test", "01.1 attention scores", "error"), ("01_test", "01.3 causal mask", "error"),
        ("01_test", "01.3 written answer", "error"), ("02_broken", "(notebook)", "error"),
        ("07_other", "(notebook)", "error")]
    assert "cannot read 01_test.ipynb" in rows[0].message and "no instructor notebook 07_other" in rows[4].message
    assert rows[3].message.startswith("instructor notebook: ") and "before any `### Exercise" in rows[3].message


# ----------------------------------------------------------------------------- the course's notebooks


def _nbstripout():
    exe = Path(sys.executable).with_name("nbstripout")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("nbstripout")
    return [found] if found else None


_STRIPPED_CELL_KEYS = {"collapsed", "ExecuteTime", "execution", "heading_collapsed", "hidden", "scrolled"}


@pytest.mark.skipif(not REPO_NOTEBOOKS, reason="no notebooks in notebooks/ yet")
def test_repo_student_versions_hide_every_solution(tmp_path):
    paths = make_student_versions(REPO / "notebooks", tmp_path)
    assert [p.name for p in paths] == [p.name for p in REPO_NOTEBOOKS]
    for src, dst in zip(REPO_NOTEBOOKS, paths):
        solution, student = nbformat.read(src, as_version=4), nbformat.read(dst, as_version=4)
        n_code_exercises = 0
        for i, (a, b) in enumerate(zip(solution.cells, student.cells), start=1):
            assert "BEGIN SOLUTION" not in b.source and "END SOLUTION" not in b.source, f"{dst.name} cell {i}"
            # every solution line must be gone, unless the same line also sits outside the markers
            inside, outside, in_region = [], set(), False
            for line in a.source.splitlines():
                if re.match(r"\s*#+\s*BEGIN SOLUTION\s*$", line):
                    in_region = True
                    n_code_exercises += a.cell_type == "code"
                elif re.match(r"\s*#+\s*END SOLUTION\s*$", line):
                    in_region = False
                elif line.strip():
                    (inside.append(line) if in_region else outside.add(line))
            kept = set(b.source.splitlines())
            leaked = [line for line in inside if line in kept and line not in outside]
            assert not leaked, f"{dst.name} cell {i}: solution text left in the student version: {leaked}"
            if inside and a.cell_type == "code":
                assert "raise NotImplementedError(" in b.source
        assert n_code_exercises >= 3, f"{src.name} has {n_code_exercises} exercises; the standard asks for 3-6"


_EXERCISE_LINE = re.compile(r"^[ \t>]*(#+|\*\*)[ \t]*Exercise\b.*$", re.MULTILINE)  # anything that looks like a heading
_REGION = re.compile(r"^\s*#+\s*BEGIN SOLUTION\s*\n(?P<key>.*?)\n\s*#+\s*END SOLUTION\s*$", re.DOTALL)


@pytest.mark.parametrize("path", REPO_NOTEBOOKS, ids=[p.name for p in REPO_NOTEBOOKS])
def test_exercise_headings_state_difficulty_and_time_with_consecutive_ids(path):
    nb = nbformat.read(path, as_version=4)
    ids = []
    for i, cell in enumerate(nb.cells, start=1):
        if cell.cell_type != "markdown":
            continue
        for line in _EXERCISE_LINE.finditer(cell.source):
            m = STRICT_HEADING.match(line.group(0))
            assert m, f"cell {i}: {line.group(0)!r} is not `### Exercise NN.k (easy|medium|hard, ~M min) · title`"
            ids.append(m.group("id"))
    number = path.name[:2]
    assert ids == [f"{number}.{k}" for k in range(1, len(ids) + 1)], f"exercise ids {ids}: expected {number}.1 .. n"
    used = {call[1].split()[0] for c in nb.cells if c.cell_type == "code" and (call := checker_call(c.source))}
    assert used <= set(ids), f"checkers {sorted(used - set(ids))} are called but have no exercise heading"


@pytest.mark.parametrize("path", REPO_NOTEBOOKS, ids=[p.name for p in REPO_NOTEBOOKS])
def test_written_answers_have_a_key_that_student_versions_hide(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    keys = []
    for i, cell in enumerate(nb.cells, start=1):
        if cell.cell_type == "markdown" and "BEGIN SOLUTION" in cell.source:
            m = _REGION.fullmatch(cell.source.strip())
            assert m, f"cell {i}: a written-answer cell must hold only `### BEGIN SOLUTION` ... `### END SOLUTION`"
            assert len(m.group("key").strip()) >= 40, f"cell {i}: the answer key is too short to grade against"
            keys.append(m.group("key"))
        if "Write your answer in the cell below" in cell.source:
            nxt = nb.cells[i] if i < len(nb.cells) else None
            assert nxt is not None and nxt.cell_type == "markdown" and "BEGIN SOLUTION" in nxt.source, (
                f"cell {i} asks for a written answer but the next cell is not a written-answer cell")
    course.make_student_version(path, tmp_path / path.name)
    student = (tmp_path / path.name).read_text()
    for key in keys:
        for line in (ln.strip() for ln in key.splitlines()):
            assert len(line) < 12 or line not in student, f"answer key text left in the student version: {line!r}"


@pytest.mark.parametrize("path", REPO_NOTEBOOKS, ids=[p.name for p in REPO_NOTEBOOKS])
def test_committed_notebook_has_current_nbgrader_metadata(path):
    try:
        stale = annotate_paths([path], check=True)[str(path)]
    except AnnotateError as e:
        pytest.fail(str(e))
    assert not stale, f"{stale[:3]}: run `minigpt course annotate {path.relative_to(REPO)}`"


@pytest.mark.skipif(not REPO_NOTEBOOKS, reason="no notebooks in notebooks/ yet")
@pytest.mark.parametrize("path", REPO_NOTEBOOKS, ids=[p.name for p in REPO_NOTEBOOKS])
def test_committed_notebook_is_clean(path):
    nb = nbformat.read(path, as_version=4)
    fix = f"run: nbstripout {path.relative_to(REPO)}"
    for i, cell in enumerate(nb.cells, start=1):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {i} has outputs; {fix}"
            assert cell.execution_count is None, f"cell {i} has an execution count; {fix}"
        dirty = _STRIPPED_CELL_KEYS & set(cell.metadata)
        assert not dirty, f"cell {i} has editor metadata {sorted(dirty)}; {fix}"
    assert set(nb.metadata) <= {"kernelspec", "language_info"}, f"notebook metadata {sorted(nb.metadata)}; {fix}"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", "kernelspec name must be python3"


@pytest.mark.skipif(not REPO_NOTEBOOKS or not _nbstripout(), reason="no notebooks yet, or nbstripout not installed")
def test_committed_notebooks_pass_nbstripout_verify():
    result = subprocess.run([*_nbstripout(), "--verify", *map(str, REPO_NOTEBOOKS)], capture_output=True, text=True)
    assert result.returncode == 0, (
        f"{result.stdout}{result.stderr}run: nbstripout notebooks/*.ipynb (it also renumbers cell ids 0, 1, ...; "
        f"random ids from Jupyter fail this check)"
    )


# ----------------------------------------------------------------------------- GitHub Actions workflow


def test_ci_workflow_is_valid_and_mirrors_the_local_checks():
    yaml = pytest.importorskip("yaml")
    text = (REPO / ".github" / "workflows" / "ci.yml").read_text()
    wf = yaml.safe_load(text)
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads the key `on` as True
    assert {"push", "pull_request", "schedule"} <= set(triggers)
    assert triggers["schedule"][0]["cron"].split()[-1] == "1"  # weekly
    jobs = wf["jobs"]
    assert {"tests", "notebooks", "newest-releases"} <= set(jobs)
    for name, job in jobs.items():
        assert job["runs-on"] == "ubuntu-latest" and job["steps"], name
        assert all(("uses" in s) != ("run" in s) for s in job["steps"]), f"{name}: a step needs uses or run"
        runs = "\n".join(s.get("run", "") for s in job["steps"])
        python = [s["with"]["python-version"] for s in job["steps"] if s.get("uses", "").startswith("actions/setup")]
        # the unit tests run on every supported Python (tests/test_packaging.py checks the list)
        assert python == (["${{ matrix.python }}"] if name == "tests" else ["3.11"]), name
        if name == "newest-releases":
            assert "pip install --upgrade torch" in runs and "--upgrade-strategy eager" in runs
            assert "schedule" in job["if"]
        else:
            assert 'pip install "torch==2.13.0" --index-url "$TORCH_CPU_INDEX"' in runs
            assert "schedule" in job["if"] and "!=" in job["if"]
    assert wf["env"]["TORCH_CPU_INDEX"] == "https://download.pytorch.org/whl/cpu"
    tests = "\n".join(s.get("run", "") for s in jobs["tests"]["steps"])
    assert "ruff check" in tests and "pytest" in tests
    nb_steps = jobs["notebooks"]["steps"]
    nb_runs = "\n".join(s.get("run", "") for s in nb_steps)
    assert "pytest --nbmake notebooks/" in nb_runs and "nbstripout --verify" in nb_runs
    assert jobs["notebooks"]["env"]["MINIGPT_FAST"] == "1"
    # the inline student-version check is valid Python and uses names this module exports
    script = nb_runs.split("<<'PY'\n", 1)[1].split("\nPY", 1)[0]
    compile(script, "ci.yml", "exec")
    assert "make_student_versions" in script and "grade(" in script
    assert {"make_student_versions", "grade"} <= set(course.__all__)


def test_report_refuses_a_minigpt_that_is_not_the_graders(monkeypatch, capsys, tmp_path):
    import types

    from minigpt.exercises import _graded

    fake = types.ModuleType("minigpt")
    fake.__file__ = str(tmp_path / "minigpt" / "__init__.py")  # a package shipped inside a submission
    monkeypatch.setitem(sys.modules, "minigpt", fake)
    with pytest.raises(ImportError, match="is not the course's"):
        _graded.report("t" * 32, False, "01.3", _mask)
    assert '"status": "error"' in capsys.readouterr().out


def test_student_without_notebooks_says_where_they_are(tmp_path):
    with pytest.raises(FileNotFoundError, match="notebooks/ folder of the course's repository"):
        make_student_versions(tmp_path / "nowhere", tmp_path / "out")


def test_grader_keeps_the_output_folder_private(monkeypatch, tmp_path):
    from minigpt.course import grading

    monkeypatch.setenv("MINIGPT_OUT_DIR", "/shared/by/everyone")
    assert "MINIGPT_OUT_DIR" not in grading.kernel_env(tmp_path, fast=True)
