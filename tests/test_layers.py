"""The package layers of docs/internals.md hold: each layer imports only the layers below it, the
library never imports the CLI, the core never imports the built-in plugins, and no module imports
itself back through others (function-local imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: layer -> the layers it may import (besides itself and ``detprune.errors``)
ALLOWED = {
    "graph": set(),
    "plugin": {"graph"},
    "recipe": {"graph", "plugin"},
    "data": set(),
    "eval": {"data", "graph"},
    "training": {"data", "eval", "graph", "plugin", "recipe"},
    "api": {"graph", "plugin", "recipe", "eval"},
    "pipeline": {"api", "data", "eval", "graph", "plugin", "recipe", "training"},
    "bench": {"api", "data", "eval", "graph", "plugin", "recipe", "training", "pipeline", "plugins"},
    "cli": {"api", "data", "eval", "graph", "plugin", "recipe", "training", "pipeline", "bench"},
    "plugins": {"api", "data", "eval", "graph", "plugin", "recipe", "training"},
}


def _modules() -> dict[str, Path]:
    mods = {}
    for base, pkg in ((REPO / "detprune", "detprune"), (REPO / "plugins", "detprune_plugins")):
        for f in base.rglob("*.py"):
            parts = [pkg, *f.relative_to(base).with_suffix("").parts]
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def layer(module: str) -> str:
    if module.startswith("detprune_plugins"):
        return "plugins"
    parts = module.split(".")
    if len(parts) == 1:
        return "plugin"  # the package root: hookimpl and a lazy public API
    return {"errors": "errors", "api": "api", "recipe": "recipe"}.get(parts[1], parts[1])


def _imports(path: Path) -> set[str]:
    """Every detprune module ``path`` imports, anywhere except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    skip = {
        id(n)
        for node in tree.body
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in found if n.split(".")[0] in ("detprune", "detprune_plugins")}


def _graph() -> dict[str, set[str]]:
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    return {m: {r for n in _imports(f) if (r := resolve(n)) and r != m} for m, f in mods.items()}


def test_each_layer_imports_only_the_layers_below_it():
    wrong = []
    for module, targets in _graph().items():
        own = layer(module)
        allowed = ALLOWED.get(own, set()) | {own, "errors"}
        wrong += [f"{module} -> {t}" for t in sorted(targets) if layer(t) not in allowed]
    assert wrong == []


def test_no_import_cycles():
    graph, seen, cycles = _graph(), {}, []

    def visit(node: str, path: list[str]) -> None:
        if seen.get(node) == "open":
            cycles.append(path[path.index(node) :] + [node])
            return
        if seen.get(node) == "done":
            return
        seen[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, path + [nxt])
        seen[node] = "done"

    for module in sorted(graph):
        visit(module, [module])
    assert cycles == []
