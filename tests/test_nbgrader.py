"""nbgrader for real: generate_assignment and autograde on notebooks 01 and 03 (fast mode).

Three submissions: the instructor's solutions typed into the release (full marks), the same with one
plausible mistake in exercise 01.3 (its points missing), and the release untouched (zero).
"""

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from minigpt.course.annotate import annotate_notebook

pytest.importorskip("nbgrader")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["01_attention_mechanism", "03_positional_encoding"]
WRONG = ("ex01_3_code", "torch.tril", "torch.triu")  # the mask keeps the future instead of the past
CONFIG = """c = get_config()
c.CourseDirectory.course_id = "minigpt"
c.CourseDirectory.db_url = "sqlite:///{db}"
c.ExecutePreprocessor.timeout = 600
"""


def nbgrader(course: Path, *args: str) -> None:
    bin_dir = str(Path(sys.executable).parent)  # nbgrader runs `alembic` from the environment's bin folder
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "MINIGPT_FAST": "1",
           "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    result = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def solutions(name: str) -> dict[str, str]:
    nb = annotate_notebook(nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4))
    return {c.metadata["nbgrader"]["grade_id"]: c.source for c in nb.cells if c.metadata["nbgrader"]["solution"]}


def submit(course: Path, student: str, fill: bool, wrong: bool = False) -> None:
    for name in NOTEBOOKS:
        nb = nbformat.read(course / "release" / "ps1" / f"{name}.ipynb", as_version=4)
        answers = solutions(name)
        for cell in nb.cells:
            gid = cell.metadata.get("nbgrader", {}).get("grade_id")
            if fill and gid in answers:
                cell.source = answers[gid]
            if wrong and gid == WRONG[0]:
                assert WRONG[1] in cell.source
                cell.source = cell.source.replace(WRONG[1], WRONG[2])
        path = course / "submitted" / student / "ps1" / f"{name}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, path)


@pytest.mark.slow
def test_nbgrader_scores_correct_wrong_and_untouched(tmp_path):
    from nbgrader.api import Gradebook

    if not all((REPO / "notebooks" / f"{n}.ipynb").is_file() for n in NOTEBOOKS):
        pytest.skip("notebooks 01 and 03 not present")
    course, db = tmp_path / "course", tmp_path / "gradebook.db"
    (course / "source" / "ps1").mkdir(parents=True)
    (course / "nbgrader_config.py").write_text(CONFIG.format(db=db))
    for name in NOTEBOOKS:  # the tool's metadata (a no-op when the repo's notebooks are already annotated)
        nb = annotate_notebook(nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4))
        nbformat.write(nb, course / "source" / "ps1" / f"{name}.ipynb")

    nbgrader(course, "generate_assignment", "ps1", "--force")
    released = (course / "release" / "ps1" / "01_attention_mechanism.ipynb").read_text()
    assert "BEGIN SOLUTION" not in released and "HIDDEN TESTS" not in released and "graded(" not in released
    submit(course, "correct", fill=True)
    submit(course, "wrong", fill=True, wrong=True)
    submit(course, "untouched", fill=False)
    nbgrader(course, "autograde", "ps1", "--force")

    with Gradebook(f"sqlite:///{db}") as gb:
        full = gb.find_assignment("ps1").max_code_score
        scores = {s: gb.find_submission("ps1", s).code_score for s in ("correct", "wrong", "untouched")}
        wrong_points = gb.find_grade(WRONG[0].replace("_code", "_check"), NOTEBOOKS[0], "ps1", "wrong")
        lost = wrong_points.max_score
    assert full >= 6  # notebooks 01 and 03 have at least three exercises each
    assert scores == {"correct": full, "wrong": full - lost, "untouched": 0}
