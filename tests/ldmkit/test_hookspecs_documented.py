"""Every hook is documented in docs/plugins.md and exercised by at least one test."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from ldmkit import hookspecs

ROOT = Path(__file__).resolve().parents[2]
HOOKS = sorted(
    name
    for name, fn in vars(hookspecs).items()
    if inspect.isfunction(fn) and getattr(fn, f"{hookspecs.PROJECT}_spec", None) is not None
)


def test_hookspecs_found() -> None:
    assert "register_samplers" in HOOKS
    assert set(HOOKS) == set(hookspecs.ALL_HOOKS), "every hook is listed: component hooks by kind, and the others"
    assert set(hookspecs.HOOK_KINDS).isdisjoint(hookspecs.EXTENSION_HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook: str) -> None:
    assert f"`{hook}`" in (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    fn = getattr(hookspecs, hook)
    assert fn.__doc__ and list(inspect.signature(fn).parameters) == ["register"]


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_called_by_a_test(hook: str) -> None:
    this = Path(__file__).resolve()
    callers = [
        path.name
        for path in sorted((ROOT / "tests").rglob("test_*.py"))
        if path.resolve() != this and f"def {hook}(" in path.read_text(encoding="utf-8")
    ]
    assert callers, f"no test implements the hook {hook}"
