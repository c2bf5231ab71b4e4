"""`import minigpt` stays light: no Hugging Face, plotting or web stack until a module needs it."""

import subprocess
import sys


def test_import_minigpt_does_not_import_heavy_packages():
    code = (
        "import sys, minigpt, minigpt.exercises; "
        "heavy = [m for m in ('transformers', 'datasets', 'matplotlib', 'fastapi', 'peft') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
