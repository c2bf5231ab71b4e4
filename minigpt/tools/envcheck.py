"""A first-cell environment check: versions, device, and the exact fix when something is off.

Students hit the same few set-up problems: an old ``transformers`` whose API was renamed, a missing
package, ``PYTORCH_ENABLE_MPS_FALLBACK`` set too late, a Colab runtime without the course package.
:func:`check_environment` finds them and prints the command that fixes each one;
:func:`colab_setup` (and the self-contained :data:`COLAB_CELL` for a notebook's first cell) installs
the course package when running in Colab and does nothing anywhere else.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

__all__ = ["COLAB_CELL", "COURSE_REPO_URL", "OUT_DIR_ENV", "REPO_URL_ENV", "TESTED", "check_environment", "colab_setup",
           "in_colab", "output_dir"]

# The ranges CI runs against (pyproject.toml holds the same ones). (lower inclusive, upper exclusive).
TESTED: dict[str, tuple[tuple[int, ...], tuple[int, ...] | None]] = {
    "python": ((3, 11), None),
    "torch": ((2, 6), None),
    "transformers": ((5,), (6,)),
}
# Needed by the notebooks; only their presence is checked (pyproject.toml pins the ranges).
OTHER_PACKAGES: dict[str, str] = {
    "numpy": "numpy>=1.26",
    "matplotlib": "matplotlib>=3.8",
    "tqdm": "tqdm>=4.66",
    "datasets": "datasets>=3",
    "tokenizers": "tokenizers>=0.20",
    "safetensors": "safetensors>=0.4",
}
MPS_FALLBACK_ENV = "PYTORCH_ENABLE_MPS_FALLBACK"

# Where Colab installs the course from. Nothing is guessed: a fork sets its own repository here, or
# the student sets $MINIGPT_REPO_URL (e.g. "https://github.com/<owner>/<repo>"), see the README.
COURSE_REPO_URL = ""
REPO_URL_ENV = "MINIGPT_REPO_URL"
# Where the notebooks write checkpoints and plots: one folder for the whole course, `../out` next to
# notebooks/ (git-ignored) unless $MINIGPT_OUT_DIR names another one.
OUT_DIR_ENV = "MINIGPT_OUT_DIR"


def output_dir(*parts: str) -> Path:
    """The course's output folder (``$MINIGPT_OUT_DIR``, else ``../out`` from the notebook's folder),
    joined with ``parts``. Creates nothing: the code that saves creates what it writes."""
    return Path(os.environ.get(OUT_DIR_ENV) or "../out", *parts)


def _version(pkg: str) -> str | None:
    """Installed version of a distribution, or None; the one place versions are looked up."""
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None


def _python_version() -> str:
    return platform.python_version()


def _release(version: str) -> tuple[int, ...]:
    """Leading release numbers of a version string: "2.13.0+cpu" -> (2, 13, 0), "5.0.0rc1" -> (5, 0, 0)."""
    m = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    if not m:
        raise ValueError(f"cannot read version {version!r}")
    return tuple(int(x) for x in m.group(1).split("."))


def _in_range(version: str, lower: tuple[int, ...], upper: tuple[int, ...] | None) -> bool:
    v = _release(version)
    return v >= lower and (upper is None or v[: len(upper)] < upper)


def _spec(lower: tuple[int, ...], upper: tuple[int, ...] | None) -> str:
    spec = ">=" + ".".join(map(str, lower))
    return spec + (",<" + ".".join(map(str, upper)) if upper else "")


def in_colab() -> bool:
    """True inside a Google Colab runtime (its ``google.colab`` module is already imported there)."""
    return "google.colab" in sys.modules


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


def _pip() -> str:
    # In a notebook `%pip` installs into the kernel's own environment; a bare `pip` may not.
    return "%pip" if _in_notebook() else "pip"


def _input_history() -> list[str] | None:
    """The cells run so far in this IPython session, oldest first; None outside IPython."""
    try:
        ip = sys.modules["IPython"].get_ipython()
        return list(ip.history_manager.input_hist_raw) if ip is not None else None
    except (KeyError, AttributeError):
        return None


_IMPORTS_TORCH = re.compile(r"^\s*(import|from)\s+(torch|minigpt|transformers)\b", re.M)
_NAME = MPS_FALLBACK_ENV
_SETS_FALLBACK = re.compile(  # environ["X"] = ..., setdefault("X", ...), putenv, %env X=..., environ.update(...X...)
    rf"""environ\[\s*['"]{_NAME}['"]\s*\]\s*=(?!=)|(setdefault|putenv)\(\s*['"]{_NAME}['"]|%env\s+{_NAME}|update\(.*{_NAME}"""
)


def _mps_fallback_set_late(history: list[str] | None = None) -> bool:
    """Did this session set PYTORCH_ENABLE_MPS_FALLBACK only after torch was imported?

    torch reads the variable once, when it is imported; setting it later does nothing. The order
    is taken from the notebook's input history (the first cell that imports torch, directly or via
    minigpt/transformers, versus the first that sets the variable). Outside IPython there is no
    history and the answer is False (a script sets variables before it starts).
    """
    if not os.environ.get(MPS_FALLBACK_ENV) or "torch" not in sys.modules:
        return False
    history = _input_history() if history is None else history
    if not history:
        return False
    first_import = first_set = None
    for i, cell in enumerate(history):
        imp, set_ = _IMPORTS_TORCH.search(cell), _SETS_FALLBACK.search(cell)
        if first_import is None and imp:
            first_import = (i, imp.start())
        if first_set is None and set_:
            first_set = (i, set_.start())
    return first_set is not None and first_import is not None and first_set > first_import


def _device() -> str:
    try:
        from ..device import get_device

        return str(get_device("auto"))
    except Exception as e:  # a broken CUDA driver must not hide the rest of the report
        return f"unknown ({type(e).__name__}: {e})"


def check_environment(verbose: bool = True) -> dict:
    """Report Python, torch, transformers and the device, compare with the tested ranges, say how to fix.

    Returns a dict with the versions, ``device``, ``colab``, ``problems`` (one sentence each, ending
    with the fix) and ``fixes`` (the commands alone). With ``verbose`` it prints a short report.
    """
    pip = _pip()
    report: dict = {
        "python": _python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "device": _device(),
        "colab": in_colab(),
        "problems": [],
        "fixes": [],
        "notes": [],
    }

    def problem(text: str, fix: str, extra: str = "") -> None:
        report["problems"].append(f"{text}. Fix: {fix}{extra}")
        report["fixes"].append(fix)

    lower, _ = TESTED["python"]
    if not _in_range(report["python"], *TESTED["python"]):
        want = ".".join(map(str, lower))
        problem(
            f"Python {report['python']} is older than the tested {want}+",
            f"install Python {want} or newer, then recreate the environment: "
            f"python{want} -m venv .venv && .venv/bin/pip install -e \".[all]\"",
        )
    for pkg in ("torch", "transformers"):
        lower, upper = TESTED[pkg]
        spec = _spec(lower, upper)
        have = report[pkg]
        install = f'{pip} install -U "{pkg}{spec}"'
        # the CPU wheel is a tenth of the CUDA one; for GPUs pytorch.org lists the right index
        extra = "  (CPU-only machine: add --index-url https://download.pytorch.org/whl/cpu)" if pkg == "torch" else ""
        if have is None:
            problem(f"{pkg} is not installed", install, extra)
        elif not _in_range(have, lower, upper):
            problem(f"{pkg} {have} is outside the tested range {spec}", install, extra)
    missing = [req for pkg, req in OTHER_PACKAGES.items() if _version(pkg) is None]
    if missing:
        problem(f"missing package(s): {', '.join(r.split('>')[0] for r in missing)}",
                f"{pip} install " + " ".join(f'"{r}"' for r in missing))
    if _mps_fallback_set_late():
        problem(
            f"{MPS_FALLBACK_ENV} was set after torch was imported, so it has no effect (torch reads it at import)",
            f'restart the kernel and make the first cell: import os; os.environ["{MPS_FALLBACK_ENV}"] = "1" '
            f"(before any import of torch or minigpt)",
        )
    if report["colab"] and report["device"] == "cpu":
        report["notes"].append("Colab without a GPU: Runtime > Change runtime type > GPU makes training much faster")
    if report["problems"] and _in_notebook():
        report["notes"].append("after a %pip install, restart the kernel (Kernel > Restart) so the new version loads")

    if verbose:
        print(f"Python {report['python']} | torch {report['torch']} | transformers {report['transformers']} "
              f"| device {report['device']}" + (" | Colab" if report["colab"] else ""))
        for p in report["problems"]:
            print("PROBLEM:", p)
        for n in report["notes"]:
            print("NOTE:", n)
        if not report["problems"]:
            tested = ", ".join(f"{k}{_spec(*v)}" for k, v in TESTED.items())
            print(f"Environment OK (tested: {tested}).")
    return report


def colab_setup(repo_url: str | None = None, ref: str | None = None) -> bool:
    """In Colab, pip-install the course package from its git repository; elsewhere do nothing.

    The repository is ``repo_url``, else ``$MINIGPT_REPO_URL``, else :data:`COURSE_REPO_URL`; when
    none is set it prints how to set it and installs nothing. ``ref`` picks a branch or tag.
    Returns True when it installed. Before the package exists in a fresh Colab runtime this module
    cannot be imported: notebooks start with :data:`COLAB_CELL`, which does the same in plain Python.
    """
    if not in_colab():
        return False
    url = repo_url or os.environ.get(REPO_URL_ENV) or COURSE_REPO_URL
    if not url:
        print(
            "Colab: to install the course package, say which repository this notebook came from: run\n"
            f'    import os; os.environ["{REPO_URL_ENV}"] = "https://github.com/<owner>/<repo>"\n'
            "with the owner and repository from this notebook's Colab address "
            "(colab.research.google.com/github/<owner>/<repo>/...), then run this cell again."
        )
        return False
    target = f"minigpt-course[notebooks] @ git+{url}" + (f"@{ref}" if ref else "")  # imported as minigpt
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", target], check=True)
    return True


# The first cell of every notebook: plain Python (the course package is not installed yet when it runs).
COLAB_CELL = '''\
# Colab only (does nothing elsewhere): install the course package from the repository this notebook came from.
import os, subprocess, sys
MINIGPT_REPO_URL = os.environ.get("MINIGPT_REPO_URL", "")  # forks: "https://github.com/<owner>/<repo>"
if "google.colab" in sys.modules:
    if MINIGPT_REPO_URL:
        target = f"minigpt-course[notebooks] @ git+{MINIGPT_REPO_URL}"  # the import name stays minigpt
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", target], check=True)
    else:
        print('Set the course repository first: os.environ["MINIGPT_REPO_URL"] = "https://github.com/<owner>/<repo>"')
'''
