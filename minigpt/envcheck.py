"""A first-cell environment check: versions, device, and the exact fix when something is off."""

from __future__ import annotations

import importlib.metadata as md
import platform
import sys

__all__ = ["check_environment"]


def _version(pkg: str) -> str | None:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None


def check_environment(verbose: bool = True) -> dict:
    """Report Python, torch, transformers and the device; returns the report as a dict."""
    import torch

    from .device import get_device

    report = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "device": str(get_device("auto")),
        "problems": [],
    }
    if sys.version_info < (3, 11):  # noqa: UP036 - the check is for users on an old interpreter
        report["problems"].append("Python >= 3.11 is needed: install it and recreate the venv (make setup)")
    if verbose:
        print(f"Python {report['python']} | torch {report['torch']} | transformers {report['transformers']} "
              f"| device {report['device']}")
        for p in report["problems"]:
            print("PROBLEM:", p)
    return report
