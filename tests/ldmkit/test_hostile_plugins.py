"""A plugin whose import is slow, or never returns, is named while it loads (ldmkit does not interrupt it)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ldmkit import registry as registry_module
from ldmkit.registry import discover

SLOW_PLUGIN = """
import time
time.sleep(0.5)
"""


@pytest.fixture
def slow_plugin(tmp_path: Path, monkeypatch) -> str:
    """A distribution ``zzz-slow`` on sys.path whose plugin module sleeps at import."""
    (tmp_path / "zzz_slow_plugin.py").write_text(SLOW_PLUGIN)
    info = tmp_path / "zzz_slow-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zzz-slow\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[ldmkit]\nzzz-slow = zzz_slow_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "zzz_slow_plugin", raising=False)
    return "zzz-slow"


def test_a_slow_import_is_named_while_it_runs_and_then_loads(slow_plugin, monkeypatch, caplog) -> None:
    monkeypatch.setattr(registry_module, "SLOW_IMPORT_SECONDS", 0.05)
    with caplog.at_level(logging.DEBUG, logger="ldmkit.registry"):
        registry = discover(only=[slow_plugin])
    messages = [r.getMessage() for r in caplog.records]
    loading = [m for m in messages if m.startswith("loading plugin 'zzz-slow' from zzz-slow")]
    warned = [
        r for r in caplog.records if r.levelno == logging.WARNING and "still importing plugin 'zzz-slow'" in r.message
    ]
    assert loading and warned, messages
    assert "LDMKIT_LOAD_PLUGINS" in warned[0].message
    assert not registry.failures
    assert any(m.startswith("plugin 'zzz-slow' imported in") for m in messages)


def test_a_quick_import_gives_no_warning(slow_plugin, monkeypatch, caplog) -> None:
    monkeypatch.setattr(registry_module, "SLOW_IMPORT_SECONDS", 30.0)
    with caplog.at_level(logging.DEBUG, logger="ldmkit.registry"):
        discover(only=[slow_plugin])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
