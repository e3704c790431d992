"""The package's one-way dependency order (DESIGN.md): no module imports a layer above it,
and module-level imports form no circle."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import attrlens

ROOT = Path(attrlens.__file__).parent

# lower number = lower layer; a module may import its own layer or any lower one
LAYERS = {
    "errors": 0, "params": 0, "redact": 0,
    "solvers": 1,
    "text": 2, "models": 2,
    "scoring": 3,
    "games": 4,
    "explainers": 5, "registry": 5,
    "analysis": 6, "evaluation": 6, "report": 6, "result": 6,
    "api": 7,
    # the data-set runner drives the API's pipeline (prepare -> explain -> finish) over many
    # items: an entry point beside api, not a library layer below it (DESIGN.md amended)
    "evaluation.runner": 7,
    "cli": 8, "__main__": 8, "__init__": 8,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, *, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.If) and top_level_only:
            continue  # TYPE_CHECKING blocks
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("attrlens"):
                mod = node.module.removeprefix("attrlens").lstrip(".")
            else:
                continue
            found.add(mod)
            for alias in node.names:
                found.add(f"{mod}.{alias.name}" if mod else alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("attrlens."):
                    found.add(alias.name.removeprefix("attrlens."))
    return found


def _layer(mod: str) -> int:
    parts = mod.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in LAYERS:
            return LAYERS[".".join(parts[:k])]
    return LAYERS["__init__"]


def test_every_top_level_part_has_a_layer():
    tops = {m.split(".")[0] for m in _modules() if m}
    assert tops <= set(LAYERS), sorted(tops - set(LAYERS))
    assert _layer("evaluation.runner") == 7 and _layer("evaluation.curves") == 6


def test_no_module_imports_a_layer_above_it():
    mods = _modules()
    bad = []
    for name, path in mods.items():
        if name in ("", "__init__", "__main__"):
            continue
        for imp in _imports(name, path, top_level_only=False):
            target = imp.split(".")[0]
            if target in LAYERS and _layer(imp) > _layer(name):
                bad.append(f"{name} -> {imp}")
    assert not bad, bad


def test_no_import_circles():
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        for imp in _imports(name, path, top_level_only=True):
            # the longest known module the import names
            parts = imp.split(".")
            for k in range(len(parts), 0, -1):
                cand = ".".join(parts[:k])
                if cand in mods and cand != name:
                    deps.add(cand)
                    break
        graph[name] = deps
    # package __init__ files re-export their children: an edge child -> package is fine
    # only when the package itself does not import the child; find cycles by DFS
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
    # a package importing its own submodule while that submodule imports the package's
    # __init__ names is not a real circle when the __init__ only re-exports: ignore those
    real = [c for c in cycles if not all(a.startswith(b + ".") or b.startswith(a + ".")
                                         for a, b in itertools.pairwise(c))]
    assert not real, real
