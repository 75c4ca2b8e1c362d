"""The packages' modules import each other without cycles and only downwards: at module level,
inside functions and under ``TYPE_CHECKING`` alike (a function-level import that dodges a cycle
is still a cycle). Modules are named by their dotted path inside the package
(``structure.discover``); a subpackage's ``__init__`` is the subpackage's own name."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "freeze_policies"
RECIPES = ROOT / "recipes"

# Lower layers never import higher ones (the architecture page in docs/ draws this).
LIBRARY_LAYERS = ["errors", "structure", "policies", "costs", "distributed", "training"]
RECIPE_LAYERS = ["data", "launcher", "experiments", "report", "benchmarks"]


def module_names(package: Path) -> dict[str, Path]:
    """Dotted name inside ``package`` -> file, for every module below it."""
    names = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1] or ["__init__"]
        names[".".join(parts)] = path
    return names


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its source. ``from pkg.sub import
    name`` is an edge to ``sub.name`` when that is a module, else to ``sub``."""
    name = package.name
    modules = module_names(package)

    def resolve(dotted: list[str]) -> str | None:
        while dotted:
            if ".".join(dotted) in modules:
                return ".".join(dotted)
            dotted = dotted[:-1]
        return "__init__"

    graph: dict[str, set[str]] = {module: set() for module in modules}
    for module, path in modules.items():
        edges = graph[module]
        here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] == name:
                        edges.add(resolve(parts[1:]))
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from . import x / from .x import y
                    base = here[: len(here) - node.level + 1] if node.level > 1 else here
                    parts = [name, *base, *(node.module.split(".") if node.module else [])]
                else:
                    parts = (node.module or "").split(".")
                if parts[0] != name:
                    continue
                for alias in node.names:
                    edges.add(resolve([*parts[1:], alias.name]))
        edges.discard(module)
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


def upward_imports(graph: dict[str, set[str]], layers: list[str]) -> list[str]:
    """Edges from a module of one layer to a module of a higher layer."""
    def layer(module: str) -> int | None:
        top = module.split(".")[0]
        return layers.index(top) if top in layers else None

    bad = []
    for module, targets in graph.items():
        for target in targets:
            low, high = layer(module), layer(target)
            if low is not None and high is not None and high > low:
                bad.append(f"{module} -> {target}")
    return sorted(bad)


def test_freeze_policies_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    assert graph["training.callbacks"] >= {"policies.registry", "training.resume",
                                           "training.audit", "training.modes"}  # sees edges
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_library_layers_import_downwards_only():
    graph = import_graph(PACKAGE)
    assert set(LIBRARY_LAYERS) <= {m.split(".")[0] for m in graph}, "a layer was renamed"
    assert upward_imports(graph, LIBRARY_LAYERS) == []


def test_recipes_have_no_import_cycle_and_import_downwards_only():
    graph = import_graph(RECIPES)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    assert upward_imports(graph, RECIPE_LAYERS) == []


def test_policies_import_the_registry_and_not_back():
    graph = import_graph(PACKAGE)
    assert "policies.registry" in graph["policies.named"]
    assert not graph["policies.registry"] & {"policies.named", "policies.parts",
                                              "policies.adaptive"}
    assert "training.callbacks" not in graph["training.optim"]


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


def test_an_upward_import_in_a_subpackage_is_found(tmp_path):
    package = tmp_path / "pkg"
    (package / "low").mkdir(parents=True)
    (package / "high").mkdir()
    for path in ("__init__.py", "low/__init__.py", "high/__init__.py", "high/top.py"):
        (package / path).write_text("")
    (package / "low" / "base.py").write_text("def f():\n    from ..high import top\n")
    graph = import_graph(package)
    assert graph["low.base"] == {"high.top"}
    assert upward_imports(graph, ["low", "high"]) == ["low.base -> high.top"]
