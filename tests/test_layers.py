"""The layer cake: no module imports from a layer above its own, and there are no import circles.

Layers (low to high): utils/_capabilities < ops < nn < {data, optim} < {models, graph, selection}
< recipes < {experiments, benchmarks, cli, registry}. Modules in one layer do not import each other's
packages either, except where listed below. Imports are read from the source (including
imports inside functions and under ``TYPE_CHECKING``), so a lazy upward import counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "batchcraft"

LAYER = {
    "_capabilities": 0, "utils": 0, "ops": 1, "nn": 2, "data": 3, "optim": 3,
    "models": 4, "graph": 4, "selection": 4, "recipes": 5,
    "experiments": 6, "benchmarks": 6, "cli": 6, "registry": 6,
}  # fmt: skip
# same-layer imports that are allowed (importer package -> imported package)
SIDEWAYS = {("cli", "experiments"), ("cli", "registry"), ("experiments", "registry"),
            ("utils", "_capabilities"),
            ("registry", "experiments"),
            # benchmarks register by decorator; the registry discovers them by importing the package
            ("benchmarks", "registry"), ("registry", "benchmarks")}  # fmt: skip


def _package(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "batchcraft" or len(parts) < 2:
        return None
    return parts[1]


def _modules() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        rel = p.relative_to(SRC.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _imports(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("batchcraft.")}


MODULES = _modules()


def _violations() -> list[str]:
    bad = []
    for name, path in sorted(MODULES.items()):
        src = _package(name)
        if src is None or src not in LAYER:
            continue
        for mod in _imports(name, path):
            dst = _package(mod)
            if dst is None or dst == src or dst not in LAYER:
                continue
            if LAYER[dst] > LAYER[src] or (LAYER[dst] == LAYER[src] and (src, dst) not in SIDEWAYS):
                bad.append(f"{name} ({src}, layer {LAYER[src]}) imports {mod} (layer {LAYER[dst]})")
    return bad


def test_every_package_has_a_layer():
    pkgs = {_package(n) for n in MODULES} - {None}
    assert pkgs <= set(LAYER), sorted(pkgs - set(LAYER))


def test_no_upward_or_sideways_imports():
    assert _violations() == []


def _module_level_graph() -> dict[str, set[str]]:
    """Imports executed at import time (module top level, not inside functions or TYPE_CHECKING)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        deps: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    deps.add(full if full in MODULES else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in MODULES and d != name}
    return graph


def test_no_import_circles_between_modules():
    """Two modules must not import each other (at any depth), lazily or not."""
    graph = {n: {m for m in _imports(n, p) if m in MODULES} - {n} for n, p in MODULES.items()}
    pkgs = {n for n, p in MODULES.items() if p.name == "__init__.py"}
    cycles = []
    for a, deps in graph.items():
        for b in deps:
            if a in graph.get(b, set()) and a < b and not ({a, b} & pkgs):
                cycles.append(f"{a} <-> {b}")
    assert cycles == []


@pytest.mark.parametrize("name", ["batchcraft.recipes", "batchcraft.data", "batchcraft.utils.io"])
def test_layer_table_is_used(name):
    assert name in MODULES


def test_readme_layer_table_matches_the_checked_layers():
    """The README's layer table is the one this test enforces (each package at its layer)."""
    import re

    readme = (SRC.parents[1] / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d) \| ([^|]+) \|", readme, flags=re.M)
    shown = {pkg: int(n) for n, pkgs in rows for pkg in re.findall(r"`(\w+)`", pkgs)}
    assert shown, "README has no layer table"
    public = {k: v for k, v in LAYER.items() if not k.startswith("_") and k != "registry"}
    assert shown == public
