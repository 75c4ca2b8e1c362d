"""The library's modules import each other without cycles: at module level, inside functions and
under ``TYPE_CHECKING`` alike (a function-level import that dodges a cycle is still a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "freeze_policies"


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module name -> the package's modules it imports anywhere in its source (``__init__``
    for ``from <package> import name`` of a name that is not a module)."""
    name = package.name
    modules = {path.stem for path in package.glob("*.py")}
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for path in package.glob("*.py"):
        edges = graph[path.stem]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
                for target in targets:
                    parts = target.split(".")
                    if parts[0] == name and len(parts) > 1 and parts[1] in modules:
                        edges.add(parts[1])
            elif isinstance(node, ast.ImportFrom):
                source = node.module or ""
                if node.level:  # relative: from . import x / from .x import y
                    source = f"{name}.{source}" if source else name
                parts = source.split(".")
                if parts[0] != name:
                    continue
                if len(parts) > 1:
                    if parts[1] in modules:
                        edges.add(parts[1])
                    continue
                for alias in node.names:
                    edges.add(alias.name if alias.name in modules else "__init__")
        edges.discard(path.stem)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def test_freeze_policies_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    assert graph["callbacks"] >= {"registry", "resume", "audit", "modes"}  # the walk sees edges
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_policies_import_the_registry_and_not_back():
    graph = import_graph(PACKAGE)
    assert "registry" in graph["policies"]
    assert not graph["registry"] & {"policies", "parts", "adaptive"}
    assert "callbacks" not in graph["optim"]


def test_a_cycle_hidden_in_a_function_is_found(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import g\n\n\ndef f():\n    return g()\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    import pkg.c\n\n\n"
        "def g():\n    from . import a\n\n    return a\n"
    )
    (package / "c.py").write_text("import os\n")
    graph = import_graph(package)
    assert graph["a"] == {"b"} and graph["b"] == {"a", "c"}
    assert find_cycle(graph) in (["a", "b", "a"], ["b", "a", "b"])
    (package / "b.py").write_text("import pkg.c\n")
    assert find_cycle(import_graph(package)) is None
