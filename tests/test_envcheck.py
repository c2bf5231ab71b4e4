"""Environment check: real report here, faked old/missing versions print the exact fix; Colab set-up."""

import importlib.metadata as md
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from minigpt.tools import envcheck

FALLBACK = envcheck.MPS_FALLBACK_ENV


def fake_versions(monkeypatch, **versions):
    """Make the version lookup return the given versions (None = not installed), the rest unchanged."""
    real = envcheck._version

    def lookup(pkg):
        return versions[pkg] if pkg in versions else real(pkg)

    monkeypatch.setattr(envcheck, "_version", lookup)


@pytest.fixture(autouse=True)
def plain_python(monkeypatch):
    """Pretend to be a script outside Jupyter and Colab unless a test says otherwise."""
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.delenv(FALLBACK, raising=False)
    monkeypatch.delenv(envcheck.REPO_URL_ENV, raising=False)


def test_reports_the_real_versions_and_device(capsys):
    report = envcheck.check_environment()
    assert report["torch"] == md.version("torch") and report["torch"].split("+")[0] in torch.__version__
    assert report["transformers"] == md.version("transformers")
    assert report["python"] == ".".join(map(str, sys.version_info[:3]))
    assert report["device"] in {"cpu", "cuda", "mps"}
    assert report["colab"] is False
    out = capsys.readouterr().out
    assert f"torch {report['torch']}" in out and f"device {report['device']}" in out
    assert len(report["problems"]) == len(report["fixes"])


def test_quiet_prints_nothing(capsys):
    envcheck.check_environment(verbose=False)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "pkg, version, fix",
    [
        ("transformers", "4.46.3", 'pip install -U "transformers>=5,<6"'),
        ("transformers", "6.0.0rc1", 'pip install -U "transformers>=5,<6"'),
        ("transformers", None, 'pip install -U "transformers>=5,<6"'),
        ("torch", "2.5.1+cpu", 'pip install -U "torch>=2.6"'),
        ("datasets", None, 'pip install "datasets>=3"'),
    ],
)
def test_faked_bad_version_prints_the_fix_command(monkeypatch, capsys, pkg, version, fix):
    fake_versions(monkeypatch, **{pkg: version})
    report = envcheck.check_environment()
    out = capsys.readouterr().out
    assert fix in out
    assert fix in report["fixes"]
    problem = next(p for p in report["problems"] if pkg in p)
    assert (version or "not installed" if pkg != "datasets" else "missing package") in problem
    assert "Environment OK" not in out


def test_faked_old_python(monkeypatch, capsys):
    monkeypatch.setattr(envcheck, "_python_version", lambda: "3.10.12")
    report = envcheck.check_environment()
    assert report["python"] == "3.10.12"
    assert "Python 3.10.12 is older than the tested 3.11+" in capsys.readouterr().out
    assert any("python3.11 -m venv .venv" in f for f in report["fixes"])


def test_in_a_notebook_the_fix_uses_percent_pip(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    fake_versions(monkeypatch, transformers="4.57.0")
    report = envcheck.check_environment()
    assert '%pip install -U "transformers>=5,<6"' in report["fixes"]
    assert "restart the kernel" in capsys.readouterr().out


@pytest.mark.parametrize(
    "version, lower, upper, ok",
    [
        ("2.13.0+cpu", (2, 6), None, True),
        ("2.6.0", (2, 6), None, True),
        ("2.5.99", (2, 6), None, False),
        ("5.0.0rc1", (5,), (6,), True),
        ("5.99.1", (5,), (6,), True),
        ("6.0.0", (5,), (6,), False),
        ("4.57.1", (5,), (6,), False),
        ("3.11.0", (3, 11), None, True),
        ("3.9.18", (3, 11), None, False),
    ],
)
def test_version_ranges(version, lower, upper, ok):
    assert envcheck._in_range(version, lower, upper) is ok


SET = f'import os\nos.environ["{FALLBACK}"] = "1"'


@pytest.mark.parametrize(
    "history, late",
    [
        (["import torch", SET], True),  # the classic mistake
        (["from minigpt.tools.envcheck import check_environment", SET], True),  # minigpt imports torch
        ([SET, "import torch"], False),
        ([SET + "\nimport torch"], False),  # same cell, set first
        (["import torch\n" + SET], True),  # same cell, import first
        ([f"%env {FALLBACK}=1", "import torch"], False),
        (["import torch", f"%env {FALLBACK}=1"], True),
        (["import torch", f'os.environ.setdefault("{FALLBACK}", "1")'], True),
        (["import torch", f'print(os.environ.get("{FALLBACK}", "0"))'], False),  # reading is not setting
        (["import torch"], False),  # set outside the notebook, before Jupyter started
    ],
)
def test_mps_fallback_set_after_torch_import(monkeypatch, history, late):
    monkeypatch.setenv(FALLBACK, "1")
    assert envcheck._mps_fallback_set_late(history) is late


def test_mps_fallback_problem_says_restart_and_first_cell(monkeypatch, capsys):
    monkeypatch.setenv(FALLBACK, "1")
    monkeypatch.setattr(envcheck, "_input_history", lambda: ["import torch", SET])
    report = envcheck.check_environment()
    out = capsys.readouterr().out
    assert f"{FALLBACK} was set after torch was imported" in out
    assert "restart the kernel" in out and "first cell" in out
    monkeypatch.delenv(FALLBACK)  # unset: nothing to report
    assert not any(FALLBACK in p for p in envcheck.check_environment(verbose=False)["problems"])
    assert report["problems"]


# ----------------------------------------------------------------------------- Colab


def no_subprocess(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append((a, k)))
    return calls


def fake_colab(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))


def test_colab_setup_is_a_noop_outside_colab(monkeypatch, capsys):
    calls = no_subprocess(monkeypatch)
    monkeypatch.setenv(envcheck.REPO_URL_ENV, "https://example.invalid/owner/repo")
    assert envcheck.in_colab() is False
    assert envcheck.colab_setup() is False
    exec(envcheck.COLAB_CELL, {})
    assert calls == [] and capsys.readouterr().out == ""


def test_colab_setup_without_url_explains_and_installs_nothing(monkeypatch, capsys):
    fake_colab(monkeypatch)
    calls = no_subprocess(monkeypatch)
    assert envcheck.colab_setup() is False
    assert envcheck.REPO_URL_ENV in capsys.readouterr().out
    exec(envcheck.COLAB_CELL, {})
    assert envcheck.REPO_URL_ENV in capsys.readouterr().out
    assert calls == []


def test_colab_setup_installs_from_the_given_repo(monkeypatch):
    fake_colab(monkeypatch)
    calls = no_subprocess(monkeypatch)
    url = "https://example.invalid/owner/repo"
    monkeypatch.setenv(envcheck.REPO_URL_ENV, url)
    assert envcheck.colab_setup() is True
    assert envcheck.colab_setup(ref="v1") is True
    exec(envcheck.COLAB_CELL, {})
    cmds = [a[0] for a, _ in calls]
    assert cmds[0] == [sys.executable, "-m", "pip", "install", "-q", f"minigpt-course[notebooks] @ git+{url}"]
    assert cmds[1][-1] == f"minigpt-course[notebooks] @ git+{url}@v1"
    assert cmds[2] == cmds[0]  # the first-cell text does what colab_setup does
    assert all(k == {"check": True} for _, k in calls)


def test_colab_report_flags_cpu_runtime(monkeypatch, capsys):
    fake_colab(monkeypatch)
    monkeypatch.setattr(envcheck, "_device", lambda: "cpu")
    report = envcheck.check_environment()
    assert report["colab"] is True and "Colab" in capsys.readouterr().out
    assert any("GPU" in n for n in report["notes"])


def test_output_dir_is_out_next_to_the_notebooks_unless_the_environment_names_one(monkeypatch, tmp_path):
    from minigpt.tools.envcheck import OUT_DIR_ENV, output_dir

    monkeypatch.delenv(OUT_DIR_ENV, raising=False)
    assert output_dir() == Path("../out") and output_dir("12_ddp") == Path("../out/12_ddp")
    monkeypatch.setenv(OUT_DIR_ENV, str(tmp_path / "runs"))
    assert output_dir("13_char_gpt") == tmp_path / "runs" / "13_char_gpt"
    assert not (tmp_path / "runs").exists()  # naming a folder creates nothing


def test_notebooks_write_only_through_output_dir():
    import json
    import re

    for path in sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        assert not re.search(r"Path\(\s*[\"']\.\./out", code), f"{path.name}: use minigpt.tools.envcheck.output_dir()"
