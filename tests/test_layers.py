"""Imports inside `minigpt` point one way: teaching core <- training <- tools, and form no cycle.

Read with `ast` (nothing is imported), counting module-level AND function-level imports: a lazy
import inside a function is still a dependency, and a lazy import upward only hides a cycle. Imports
under `if TYPE_CHECKING:` are not run and are not counted. A package's `__init__` is not counted as a
dependency of its own submodules (Python imports it first anyway; that is not an edge anyone wrote).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "minigpt"

# Low to high. A module may import its own layer or a lower one, never a higher one.
# A name ending in ".*" covers a sub-package (its __init__ and every module under it).
LAYERS: dict[str, set[str]] = {
    "core": {
        "minigpt",  # the package __init__: re-exports the core (train/checkpoint names load on first use)
        "attention", "positional", "blocks", "contract", "model", "generation", "tokenizer", "data",
        "device", "moe", "lora", "atomic", "schedule", "optim", "baselines", "seq2seq", "_extras",
    },
    "training": {"train", "checkpoint", "presets", "posttrain", "evaluation", "training.*"},
    "tools": {"hf.*", "tools.*", "exercises.*", "course.*", "serve.*", "cli", "__main__"},
}
ORDER = list(LAYERS)

# (importer, imported): allowed although it goes upward. Keep empty unless there is no other way,
# and say why next to each entry.
EXCEPTIONS: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str | None:
    short = "minigpt" if module == "minigpt" else module.removeprefix("minigpt.")
    for layer, names in LAYERS.items():
        for name in names:
            if short == name or (name.endswith(".*") and (short == name[:-2] or short.startswith(name[:-1]))):
                return layer
    return None


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:` (typing only, never run)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def _owner(name: str) -> str:
    """The module of `minigpt` that a dotted import target lives in (a package, module or attribute)."""
    while name not in MODULES:
        name = name.rsplit(".", 1)[0]
    return name


def imports_of(module: str) -> set[str]:
    """Every `minigpt` module that `module` imports, anywhere in its body."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skipped = _type_checking_only(tree)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [f"{prefix}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "minigpt":
                found.add(_owner(target))
    found.discard(module)
    # a submodule's parent packages are imported by Python before it; not a dependency it declares
    return {t for t in found if not module.startswith(t + ".")}


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_has_a_layer():
    unknown = sorted(m for m in MODULES if layer_of(m) is None)
    assert not unknown, (
        f"{unknown} belong to no layer: add each to LAYERS in tests/test_layers.py -- 'core' if the "
        "teaching code needs it, 'training' if it trains/saves models, else 'tools'"
    )


def test_imports_never_point_to_a_higher_layer():
    upward = []
    for module, targets in GRAPH.items():
        for target in targets:
            low, high = layer_of(module), layer_of(target)
            if low and high and ORDER.index(high) > ORDER.index(low) and (module, target) not in EXCEPTIONS:
                upward.append(f"{module} ({low}) imports {target} ({high})")
    assert not upward, "imports must point down (core <- training <- tools):\n" + "\n".join(sorted(upward))


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    cycle = _find_cycle(GRAPH)
    assert cycle is None, "import cycle (function-level imports count): " + " -> ".join(cycle or [])


def test_the_checker_sees_lazy_imports_and_cycles():
    """The rules above must be able to fail: a function-level import counts, a cycle is found."""
    assert "minigpt.serve.app" in GRAPH["minigpt.serve"]  # imported inside a function there
    assert "minigpt.generation" in GRAPH["minigpt.model"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer_of("minigpt.hf.convert") == "tools" and layer_of("minigpt.model") == "core"
    assert layer_of("minigpt.no_such_module") is None
