"""INSTRUCTORS.md's table of notebooks and exercises says what the notebooks hold."""

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEADING = re.compile(r"^### Exercise (\d\d)\.(\d+) \((easy|medium|hard), ~(\d+) min\) · .+$", re.M)
ROW = re.compile(r"^\| `(\d\d_[a-z0-9_]+)` \| (\d+) \| (\d+) \| (\d+) \| (\d+)/(\d+)/(\d+) \| ~(\d+) min \| (\d+) \|",
                 re.M)


def _counts(path: Path) -> tuple[int, ...]:
    """(exercises, checked, written, easy, medium, hard, minutes, points) of one notebook."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    levels, minutes, checked, written, points = [], 0, 0, 0, 0
    for cell in cells:
        source = "".join(cell["source"])
        for m in HEADING.finditer(source):
            levels.append(m.group(3))
            minutes += int(m.group(4))
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade"):
            points += meta.get("points", 0)
            written += bool(meta.get("solution"))
            checked += not meta.get("solution")
    return (len(levels), checked, written, levels.count("easy"), levels.count("medium"), levels.count("hard"),
            minutes, points)


def test_instructors_table_lists_every_notebook_with_its_exercise_counts():
    rows = {m.group(1): tuple(int(g) for g in m.groups()[1:]) for m in ROW.finditer(
        (REPO / "INSTRUCTORS.md").read_text(encoding="utf-8"))}
    notebooks = {p.stem: p for p in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))}
    assert sorted(rows) == sorted(notebooks), "INSTRUCTORS.md's table must list exactly the notebooks"
    for stem, path in notebooks.items():
        assert rows[stem] == _counts(path), f"{stem}: the table says {rows[stem]}, the notebook {_counts(path)}"
