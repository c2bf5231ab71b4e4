"""Optional dependencies: which extra provides which module, and one clear error when it is missing.

The core install (``pip install minigpt-course``) trains and samples models; everything else sits
behind an extra declared in ``pyproject.toml``. A feature that needs an extra calls
:func:`require` (or :func:`require_installed` when importing the module would be slow) and a user
without it gets :class:`MissingExtraError`, whose message is the one line to act on::

    minigpt serve needs the [serve] extra: pip install 'minigpt-course[serve]'

The command line prints that line and exits with status 2 (see ``minigpt.cli.main``); it also
translates a plain ``ModuleNotFoundError`` for a module listed in :data:`EXTRA_OF_MODULE`, so a
function-level import nobody wrapped still gives the same line instead of a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

__all__ = ["DISTRIBUTION", "EXTRA_OF_MODULE", "MissingExtraError", "install_hint", "missing_extra", "require",
           "require_installed"]

DISTRIBUTION = "minigpt-course"  # the name on the package index; the import name is `minigpt`

# Top-level import name -> the smallest extra that installs it (pyproject.toml's optional-dependencies).
EXTRA_OF_MODULE: dict[str, str] = {
    "transformers": "hf",
    "datasets": "hf",
    "accelerate": "hf",
    "peft": "hf",
    "huggingface_hub": "hf",
    "matplotlib": "viz",
    "pandas": "viz",
    "fastapi": "serve",
    "uvicorn": "serve",
    "prometheus_client": "serve",
    "httpx": "serve",
    "pydantic": "serve",
    "nbformat": "grading",
    "nbclient": "grading",
    "nbgrader": "grading",
    "IPython": "notebooks",
    "ipywidgets": "notebooks",
    "sacrebleu": "notebooks",
    "rouge_score": "notebooks",
    "tensorboard": "logging",
    "wandb": "logging",
    "yaml": "logging",
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""

    def __init__(self, feature: str, extra: str, module: str):
        super().__init__(f"{feature} needs the [{extra}] extra: {install_hint(extra)}", name=module)
        self.feature = feature
        self.extra = extra


def install_hint(extra: str) -> str:
    """The command that installs ``extra``, e.g. ``pip install 'minigpt-course[serve]'``."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def _extra_for(module: str, extra: str | None) -> str:
    root = module.split(".", 1)[0]
    if extra is None:
        extra = EXTRA_OF_MODULE.get(root)
        if extra is None:
            raise KeyError(f"{root!r} belongs to no extra; add it to minigpt._extras.EXTRA_OF_MODULE")
    return extra


def require(module: str, extra: str | None = None, feature: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra that installs it.

    ``extra`` defaults to the one :data:`EXTRA_OF_MODULE` lists; ``feature`` is what the user tried
    (``"minigpt serve"``), defaulting to the module name.
    """
    extra = _extra_for(module, extra)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or module.split(".", 1)[0] != e.name.split(".", 1)[0]:
            raise  # the module is there but something it imports is not: not ours to rename
        raise MissingExtraError(feature or module, extra, module) from None


def require_installed(*modules: str, extra: str | None = None, feature: str | None = None) -> None:
    """Like :func:`require`, without importing: a cheap check for modules that are slow to import."""
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ValueError:  # a module stubbed as None in sys.modules (how the tests simulate absence)
            found = False
        if not found:
            raise MissingExtraError(feature or module, _extra_for(module, extra), module)


def missing_extra(exc: BaseException, feature: str) -> MissingExtraError | None:
    """The :class:`MissingExtraError` to report for ``exc``, or None when it is not a missing extra.

    Passes a :class:`MissingExtraError` through; turns a ``ModuleNotFoundError`` for a module of
    :data:`EXTRA_OF_MODULE` into one (``feature`` names what was being done).
    """
    if isinstance(exc, MissingExtraError):
        return exc
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        root = exc.name.split(".", 1)[0]
        if root in EXTRA_OF_MODULE:
            return MissingExtraError(feature, EXTRA_OF_MODULE[root], exc.name)
    return None
