"""Instructor tools: student versions, grading, and the committed notebooks' cleanliness (a CI check)."""

import argparse
import ast
import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from minigpt import course
from minigpt.course import SolutionMarkerError, make_student_versions, strip_solutions

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


def test_import_stays_light():
    # the CLI imports course.py at start-up: nbformat/nbclient must be imported inside functions only
    tree = ast.parse(Path(course.__file__).read_text())
    top = [a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names]
    top += [n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module]
    assert top and not {m.split(".")[0] for m in top} & {"nbformat", "nbclient", "torch"}


# ----------------------------------------------------------------------------- running and grading


@pytest.mark.slow
def test_grade_writes_one_row_per_student_and_exercise(tmp_path):
    """alice submits the solution, bob the untouched student version, carol a wrong answer plus a crash.

    bob's row also shows that executing a student version (nbclient, allow_errors=True) records
    "not done" and raises nowhere: any error output would have added a "(cell N)" row.
    """
    solution = synthetic_notebook()
    write_nb(solution, tmp_path / "src" / "99_test.ipynb")
    (stub,) = make_student_versions(tmp_path / "src", tmp_path / "student")
    subs = tmp_path / "submissions"
    write_nb(solution, subs / "alice" / "99_test.ipynb")  # folder layout
    shutil.copy(stub, subs / "bob__99_test.ipynb")  # flat layout
    wrong = synthetic_notebook(
        scaffold="def my_add(a, b):\n    return a - b",
        extra_cells=[_code("print(undefined_name)")],  # a crash outside the checker
    )
    write_nb(wrong, subs / "carol" / "99_test.ipynb")
    (subs / "carol" / ".ipynb_checkpoints").mkdir()
    write_nb(wrong, subs / "carol" / ".ipynb_checkpoints" / "99_test-checkpoint.ipynb")  # ignored

    out = tmp_path / "grades" / "grades.csv"
    course.grade(subs, out, timeout=120)
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == course.CSV_COLUMNS
        rows = [(r["student"], r["notebook"], r["exercise"], r["status"], r["message"]) for r in reader]
    assert rows[:2] == [
        ("alice", "99_test", "99.1 add", "passed", ""),
        ("bob", "99_test", "99.1 add", "not done", "still raises NotImplementedError"),
    ]
    assert rows[2] == ("carol", "99_test", "99.1 add", "failed", "add(2, 3) should be 5: did you subtract?")
    assert rows[3][:4] == ("carol", "99_test", "(cell 5)", "error")
    assert rows[3][4] == "NameError: name 'undefined_name' is not defined"
    assert len(rows) == 4


def test_error_outputs_become_rows_except_checker_failures():
    nb = nbformat.v4.new_notebook()
    errors = [("ExerciseFailed", "already in the results file"), ("NotImplementedError", "hint"),
              ("KeyboardInterrupt", ""), ("ZeroDivisionError", "division by zero")]
    nb.cells = [nbformat.v4.new_markdown_cell("text")]
    for ename, evalue in errors:
        cell = _code("x")
        cell.outputs = [nbformat.v4.new_output("error", ename=ename, evalue=evalue, traceback=[])]
        nb.cells.append(cell)
    rows = [(r.exercise, r.status, r.message) for r in course._cell_error_rows(nb, "s", "n", timeout=7)]
    assert rows == [
        ("(cell 3)", "not done", "NotImplementedError: hint"),
        ("(cell 4)", "error", "KeyboardInterrupt: the cell ran longer than 7 s (the per-cell timeout)"),
        ("(cell 5)", "error", "ZeroDivisionError: division by zero"),
    ]


def test_find_submissions_layouts_and_bad_names(tmp_path):
    for p in ["ann/01_a.ipynb", "ann/ps1/02_b.ipynb", "ben__01_a.ipynb", "notes.txt"]:
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p).write_text("{}")
    found = [(s, n) for s, n, _ in course.find_submissions(tmp_path)]
    assert found == [("ann", "01_a"), ("ann", "ps1/02_b"), ("ben", "01_a")]
    (tmp_path / "nobody.ipynb").write_text("{}")
    with pytest.raises(ValueError, match="<student>__<notebook>.ipynb"):
        course.find_submissions(tmp_path)


def test_unreadable_submission_is_an_error_row(tmp_path):
    (tmp_path / "dan").mkdir()
    (tmp_path / "dan" / "01.ipynb").write_text("not json")
    rows = course.grade(tmp_path, tmp_path / "g.csv")
    assert [(r.student, r.exercise, r.status) for r in rows] == [("dan", "(notebook)", "error")]
    assert "cannot read 01.ipynb" in rows[0].message


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
        assert python == ["3.11"], name
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
