"""The library's dependencies are what the library imports: every module of freeze_policies/
imports (in a fresh interpreter) with the recipes' packages made unimportable, and the third-party
packages the library's source imports are exactly pyproject's ``[project] dependencies`` (the
recipes' own packages sit in the ``recipes`` extra)."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "freeze_policies"
RECIPE_ONLY = ("datasets", "evaluate", "pandas", "peft", "matplotlib", "recipes")
OPTIONAL = {"peft", "deepspeed"}  # imported only when a PEFT model or DeepSpeed is in use
DISTRIBUTION = {"yaml": "pyyaml"}  # import name -> distribution name, where they differ

BLOCKED_IMPORT = """
import importlib, json, pkgutil, sys

# a package "not installed": None in sys.modules makes `import` raise ImportError and
# importlib.util.find_spec (what transformers' availability checks call) return None
for name in {blocked!r}:
    sys.modules[name] = None
import freeze_policies
names = sorted(m.name for m in pkgutil.walk_packages(freeze_policies.__path__, "freeze_policies."))
for name in names:
    importlib.import_module(name)
from freeze_policies import *  # noqa: the public names, lazy ones included
for public in freeze_policies.__all__:
    getattr(freeze_policies, public)
print(json.dumps(names))
"""


def test_every_library_module_imports_without_the_recipes_packages():
    code = BLOCKED_IMPORT.format(blocked=RECIPE_ONLY)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert "freeze_policies.training.trainer" in imported and "freeze_policies.__main__" in imported
    assert len(imported) > 30


def test_a_blocked_package_is_really_unimportable():
    """The mechanism above works: the same blocking makes a recipe module fail to import."""
    code = ("import sys\nsys.modules['datasets'] = None\n"
            "import recipes.launcher.seq2seq\n")  # imports datasets at module level
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr


def third_party_imports() -> set[str]:
    names = set()
    for path in LIBRARY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {name for name in names
            if name not in sys.stdlib_module_names and name not in ("freeze_policies",
                                                                    "__future__")}


def test_the_dependencies_are_what_the_library_imports():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!~ \[;]", spec, maxsplit=1)[0].lower()
                for spec in project["dependencies"]}
    imported = {DISTRIBUTION.get(name, name) for name in third_party_imports() - OPTIONAL}
    assert declared == imported
    recipes_extra = {re.split(r"[<>=!~ \[;]", spec, maxsplit=1)[0].lower()
                     for spec in project["optional-dependencies"]["recipes"]}
    assert {"datasets", "evaluate", "pandas", "peft", "matplotlib"} <= recipes_extra
    assert not recipes_extra & declared
