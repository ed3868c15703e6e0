"""The layer contract of the README's code map: imports point down, and no import (at module level or
inside a function) closes a cycle between the project's modules.

Read from the source with ``ast``, so an import hidden inside a function counts like any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where each installed package lives in the repository (pyproject's package-dir).
PACKAGE_DIRS = {"vitres_deploy": ROOT / "vitres_deploy", "vitres_deploy.search": ROOT / "search",
                "vitres_deploy.export": ROOT / "export"}

# Bottom to top. A module may import its own room and any room of a lower layer, nothing else: rooms of one
# layer (search and export) do not import each other. Keep in step with the README's "Code map".
LAYERS: list[dict[str, tuple[str, ...]]] = [
    {"base": ("vitres_deploy", "vitres_deploy.errors", "vitres_deploy.files", "vitres_deploy.progress",
              "vitres_deploy.text", "vitres_deploy.distributed", "vitres_deploy.rundir", "vitres_deploy.seeding",
              "vitres_deploy.values", "vitres_deploy.workers")},
    {"model": ("vitres_deploy.space", "vitres_deploy.arch", "vitres_deploy.macs", "vitres_deploy.vit_resnas",
               "vitres_deploy.supernet", "vitres_deploy.checkpoint", "vitres_deploy.archfile")},
    {"data": ("vitres_deploy.data",)},
    {"convert": ("vitres_deploy.convert",)},
    {"runtime": ("vitres_deploy.runtime",)},
    {"latency": ("vitres_deploy.latency",)},
    {"training": ("vitres_deploy.train", "vitres_deploy.finetune", "vitres_deploy.evaluate",
                  "vitres_deploy.quantized")},
    {"search": ("vitres_deploy.search",), "export": ("vitres_deploy.export",)},
    {"app": ("vitres_deploy.app",)},
    {"cli": ("vitres_deploy.cli",)},
]


def module_files() -> dict[str, Path]:
    """Every module of the installed packages, by dotted name."""
    out: dict[str, Path] = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if any(p in PACKAGE_DIRS and PACKAGE_DIRS[p] != folder for p in parts):
                continue
            name = ".".join([package, *parts])
            if package == "vitres_deploy" and parts and f"vitres_deploy.{parts[0]}" in PACKAGE_DIRS:
                continue
            out[name] = path
    return out


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imports_of(name: str, path: Path, modules: dict[str, Path], source: str | None = None) -> set[str]:
    """The project modules ``name`` imports anywhere in its source (functions included), resolved."""
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    package = name if _is_package(path) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            submodules = [f"{origin}.{a.name}" for a in node.names]
            # ``from pkg import mod`` runs pkg's __init__ too, but only names that are not submodules come from it
            targets = submodules + ([origin] if any(m not in modules for m in submodules) else [])
        else:
            continue
        for target in targets:
            if target in modules:
                found.add(target)
    found.discard(name)
    return found


def layer_of(name: str) -> tuple[int, str]:
    """(layer index, room) of a module: the room whose prefix matches longest."""
    best: tuple[int, int, str] | None = None
    for index, rooms in enumerate(LAYERS):
        for room, prefixes in rooms.items():
            for prefix in prefixes:
                if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                    best = (len(prefix), index, room)
    if best is None:
        raise LookupError(name)
    return best[1], best[2]


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_every_module_has_a_layer() -> None:
    missing = []
    for name in module_files():
        try:
            layer_of(name)
        except LookupError:
            missing.append(name)
    assert not missing, f"modules outside the layer map (add them to LAYERS and the README's code map): {missing}"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a higher layer, or of another room of the same layer."""
    upward = []
    for name, targets in graph.items():
        here, room = layer_of(name)
        for target in sorted(targets):
            there, other = layer_of(target)
            if there > here or (there == here and other != room):
                upward.append(f"{name} ({room}) imports {target} ({other})")
    return upward


def test_imports_point_down() -> None:
    upward = upward_imports(import_graph())
    assert not upward, "imports that do not point down:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    graph = import_graph()
    # Tarjan's strongly connected components; a component of more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("name, source", [
    ("vitres_deploy.latency.profiler", "def f():\n    from ..export.pipeline import export_bundle\n"),
    ("vitres_deploy.runtime.cache", "import vitres_deploy.search.evolution\n"),
    ("vitres_deploy.search.fitness", "from ..export import checks\n"),
])
def test_the_contract_catches_an_upward_import(name: str, source: str) -> None:
    """The check itself: an upward import, even one inside a function, is reported."""
    modules = module_files()
    graph = {name: imports_of(name, modules[name], modules, source)}
    assert len(upward_imports(graph)) == 1
