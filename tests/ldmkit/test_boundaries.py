"""The boundaries of DESIGN.md, checked on the source: who may import whom.

- No module of the core (``ldmkit/``) imports a plugin package.
- No plugin (the built-in ones and the example distribution) imports another plugin's modules.
- A plugin imports from the core only its public, documented API: a module whose dotted name has no
  part starting with ``_``, that the Python API reference documents (``::: ldmkit.X`` in
  ``docs/reference/api.md``), and a name listed in that module's ``__all__``.

The test lists no exceptions.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "ldmkit"
PLUGIN_ROOTS = [ROOT / "plugins", ROOT / "examples" / "ldmkit-plugin-example"]
API_DOC = ROOT / "docs" / "reference" / "api.md"


def plugin_packages() -> dict[str, Path]:
    """Every plugin package: name -> folder."""
    found = {}
    for root in PLUGIN_ROOTS:
        for init in sorted(root.glob("*/__init__.py")):
            found[init.parent.name] = init.parent
    return found


def imports(path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(line, module, imported names) for every import statement of a file, nested ones included.

    ``import a.b`` gives ``("a.b", [])``; ``from a import b, c`` gives ``("a", ["b", "c"])``; relative imports are
    resolved against the file's package.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: only within one's own package, which is always allowed
                continue
            yield node.lineno, module, [alias.name for alias in node.names]


def documented_modules() -> set[str]:
    """Every dotted name the API reference documents (``::: ldmkit.x.Name``), and each of its prefixes."""
    entries = re.findall(r"^:::\s+(ldmkit(?:\.\w+)*)", API_DOC.read_text(encoding="utf-8"), flags=re.M)
    return {".".join(e.split(".")[: i + 1]) for e in entries for i in range(e.count(".") + 1)}


def public_names(module: str) -> set[str]:
    return set(getattr(importlib.import_module(module), "__all__", ()))


def test_the_core_imports_no_plugin():
    plugins = set(plugin_packages())
    offences = []
    for path in sorted(CORE.rglob("*.py")):
        for line, module, _ in imports(path):
            if module.split(".")[0] in plugins:
                offences.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
        text = path.read_text(encoding="utf-8")
        for name in plugins:  # resources.files("ldmkit_x"), importlib.import_module("ldmkit_x") ...
            for match in re.finditer(rf"[\"']{name}[\"'.]", text):
                offences.append(f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1} names {name}")
    assert not offences, "the core knows a plugin:\n" + "\n".join(offences)


@pytest.mark.parametrize("package", sorted(plugin_packages()))
def test_a_plugin_imports_no_other_plugin_and_only_public_core_names(package):
    folder = plugin_packages()[package]
    others = set(plugin_packages()) - {package}
    documented = documented_modules()
    offences = []
    for path in sorted(folder.rglob("*.py")):
        where = path.relative_to(ROOT)
        for line, module, names in imports(path):
            top = module.split(".")[0]
            if top in others:
                offences.append(f"{where}:{line} imports the plugin module {module}")
            if top != "ldmkit":
                continue
            if module == "ldmkit" and not names:
                continue  # import ldmkit
            if any(part.startswith("_") for part in module.split(".")):
                offences.append(f"{where}:{line} imports the private module {module}")
                continue
            if module != "ldmkit" and module not in documented:
                offences.append(f"{where}:{line} imports {module}, which docs/reference/api.md does not document")
                continue
            public = public_names(module)
            for name in names:
                submodule = f"{module}.{name}"
                if name in public or (module == "ldmkit" and submodule in documented):
                    continue
                offences.append(f"{where}:{line} imports {name!r} from {module}, not in its __all__")
    assert not offences, f"plugin {package} crosses a boundary:\n" + "\n".join(offences)


def test_every_documented_module_lists_its_public_names():
    for name in sorted(documented_modules()):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            continue  # a class or function entry such as ldmkit.pipeline.Pipeline
        assert getattr(module, "__all__", None), f"{name} is documented but has no __all__"
