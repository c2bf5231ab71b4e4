"""The library type-checks clean with mypy (config: mypy.ini; scope and exclusions are listed there)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about 5 s with mypy's cache, 1-2 min from a cold cache (it reads torch's stubs)
def test_library_type_checks_clean():
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed in this environment (pip install mypy); the type check did not run")
    result = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "mypy.ini")], cwd=ROOT,
                            capture_output=True, text=True, timeout=900)
    report = result.stdout + result.stderr
    assert result.returncode == 0 and "Success: no issues found" in report, report[-6000:]
