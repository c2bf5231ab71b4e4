"""DESIGN.md against the code: the listed public names exist and the documented signatures are real.

The format (stated at the top of DESIGN.md's tables): in a table row ``| `module` | ... |`` every
backticked item of the second column is a public name of that module, ``name(args)`` giving the exact
parameter list (annotations left out) and ``name(...)`` the name only; elsewhere in the file, every
backticked ``minigpt.module.name(args)`` is checked the same way.
"""

import argparse
import importlib
import inspect
import re
from pathlib import Path

import pytest

DESIGN = (Path(__file__).resolve().parents[1] / "DESIGN.md").read_text(encoding="utf-8")
NAME = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
ITEM = re.compile(rf"^(?P<name>{NAME})(?:\((?P<args>.*?)\))?(?:\s*->.*)?$")


def _code_spans(text: str) -> list[str]:
    return [m.replace("\\|", "|") for m in re.findall(r"`((?:[^`\\]|\\.)+)`", text)]


def _cells(row: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]]


def table_rows() -> list[tuple[list[str], str]]:
    """(modules, second cell) of every module table row."""
    rows = []
    for line in DESIGN.splitlines():
        if not line.startswith("| `"):
            continue
        cells = _cells(line)
        modules = re.findall(r"`(\w+(?:\.\w+)*)`", cells[0])  # `hf.data`: a module of a sub-package
        rows.append((modules, cells[1]))
    return rows


def resolve(dotted: str):
    """The object a dotted path names: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = inspect.getattr_static(obj, attr) if inspect.isclass(obj) else getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def format_signature(obj) -> str:
    """Parameters as DESIGN.md writes them: no annotations, no self, `*` before keyword-only ones."""
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    if isinstance(obj, property):
        obj = obj.fget
    sig = inspect.signature(obj)
    out, star = [], False
    for p in sig.parameters.values():
        if p.name in ("self", "cls") and not out:
            continue
        text = p.name
        if p.kind is p.VAR_POSITIONAL:
            text, star = "*" + p.name, True
        elif p.kind is p.VAR_KEYWORD:
            text = "**" + p.name
        elif p.kind is p.KEYWORD_ONLY and not star:
            out.append("*")
            star = True
        if p.default is not p.empty:
            text += "=" + repr(p.default)
        out.append(text)
    return ", ".join(out)


def _normalise(args: str) -> str:
    return re.sub(r"\s+", "", args)


def documented_items():
    """(where, dotted name, documented args or None) for everything the doc claims."""
    items = []
    for modules, cell in table_rows():
        for span in _code_spans(cell):
            if span in modules:
                continue  # a label: "`tools.analysis`, `tools.viz` | `tools.analysis`: ..."
            m = ITEM.match(span)
            assert m, f"DESIGN.md row {modules}: `{span}` is not a name or name(args); keep the format parseable"
            name, args = m["name"], m["args"]
            if name.startswith(("torch.", "minigpt.")):
                candidates = [name]
            else:
                candidates = [f"minigpt.{mod}.{name}" for mod in modules]
            items.append((f"row {'/'.join(modules)}", candidates, args))
    body = DESIGN.split("## Core", 1)[1]
    for span in _code_spans(body):
        if not span.startswith("minigpt."):
            continue
        m = ITEM.match(span)
        assert m, f"DESIGN.md: `{span}` is not a name or name(args)"
        items.append(("prose", [m["name"]], m["args"]))
    return items


ITEMS = documented_items()


def test_the_doc_lists_enough_to_be_worth_checking():
    assert len(table_rows()) >= 20
    assert sum(args is not None and args != "..." for _, _, args in ITEMS) >= 60


@pytest.mark.parametrize("where,candidates,args", ITEMS, ids=[c[0] for _, c, _ in ITEMS])
def test_documented_name_exists_with_the_documented_signature(where, candidates, args):
    found = []
    for dotted in candidates:
        try:
            found.append(resolve(dotted))
        except (ImportError, AttributeError):
            continue
    assert found, f"DESIGN.md ({where}) lists {candidates[0].rsplit('.', 1)[-1]}, which none of {candidates} has"
    if args is None or args == "...":
        return
    actual = format_signature(found[0])
    assert _normalise(actual) == _normalise(args), (
        f"DESIGN.md ({where}) documents {candidates[0]}({args}) but the code has ({actual})"
    )


def test_model_contract_section_names_the_protocol_and_what_generate_passes():
    from minigpt.model import CachedLanguageModel, LanguageModel

    contract = DESIGN.split("### Model contract", 1)[1]
    assert "typing.Protocol" in contract and "last_only" in contract
    assert "`minigpt.model.LanguageModel.__call__(idx, targets=None)`" in contract
    assert format_signature(LanguageModel.__call__) == "idx, targets=None"
    assert format_signature(CachedLanguageModel.new_kv_cache) == "batch_size"


def test_subcommand_plugins_are_the_ones_the_cli_loads():
    from minigpt import cli

    line = next(ln for ln in DESIGN.splitlines() if ln.startswith("Plug-ins:"))
    spans = _code_spans(line)
    modules = [s for s in spans if s.startswith("minigpt.")]
    commands = [s for s in spans if not s.startswith("minigpt.")]
    assert tuple(modules) == tuple(cli._PLUGINS)
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands) <= set(sub.choices), sorted(sub.choices)
    for module in modules:
        assert callable(getattr(importlib.import_module(module), "add_cli", None)), module
