"""How ldmkit's modules import each other: no circles, and submodules reachable lazily as attributes."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import ldmkit

PACKAGE = Path(ldmkit.__file__).parent


def _module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the ldmkit package."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports outside functions and classes (those under ``if TYPE_CHECKING:`` included)."""
    found, pending = [], list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            pending.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))
    return found


def _imported(name: str, is_package: bool, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> set[str]:
    """The ldmkit modules one import statement names (``from pkg import sub`` names the submodule)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            here = name.split(".") if is_package else name.split(".")[:-1]
            base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    found = set()
    for target in targets:
        while target not in modules and "." in target:
            target = target.rsplit(".", 1)[0]
        if target in modules and target != name:
            found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the ldmkit modules it imports at module level."""
    modules = _module_files()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges: set[str] = set()
        for node in _module_level_imports(tree):
            edges |= _imported(name, path.name == "__init__.py", node, modules)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" once every successor is explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_the_graph_sees_module_level_and_type_checking_imports():
    graph = import_graph()
    assert "ldmkit.pipeline" in graph["ldmkit"]  # `from ldmkit.pipeline import Pipeline`
    assert "ldmkit.pipeline" in graph["ldmkit.fast.path"]  # under `if TYPE_CHECKING:`
    assert "ldmkit.fast.config" in graph["ldmkit.fast.path"]  # `from ldmkit.fast.config import ...`
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_circle_among_ldmkit_modules():
    assert find_cycle(import_graph()) is None


def _run(code: str) -> object:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def test_submodules_are_attributes_imported_on_first_access():
    code = """
import json, sys
import ldmkit
heavy = ["ldmkit.compvis", "ldmkit.fast", "ldmkit.training", "transformers", "diffusers"]
before = [name for name in heavy if name in sys.modules]
load = ldmkit.compvis.load
listed = dir(ldmkit)
print(json.dumps({"before": before, "after": "ldmkit.compvis" in sys.modules, "callable": callable(load),
                  "listed": [n for n in ["compvis", "testing", "fast", "training", "pipeline"] if n in listed],
                  "fast": ldmkit.fast.__name__}))
"""
    out = _run(code)
    assert out["before"] == []  # import ldmkit stays light
    assert out["after"] and out["callable"] and out["fast"] == "ldmkit.fast"
    assert out["listed"] == ["compvis", "testing", "fast", "training", "pipeline"]


def test_an_unknown_attribute_is_an_attribute_error():
    code = """
import json, ldmkit
try:
    ldmkit.no_such_module
except AttributeError as exc:
    print(json.dumps(str(exc)))
"""
    assert "no_such_module" in _run(code)
    assert not hasattr(ldmkit, "_private")
