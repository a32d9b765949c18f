"""JSON reading shared by specs, configs, checkpoint headers and PNG metadata: duplicate keys refused."""

from __future__ import annotations

import json
from typing import Any


class DuplicateKeyError(ValueError):
    """A JSON object names the same key twice (json.loads would silently keep the last)."""


def reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for :func:`json.loads` that refuses a repeated key."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(f"duplicate key {key!r}")
        out[key] = value
    return out


def loads(text: str | bytes, **kwargs: Any) -> Any:
    """:func:`json.loads` with duplicate keys refused (raises ValueError subclasses on bad input)."""
    return json.loads(text, object_pairs_hook=reject_duplicate_keys, **kwargs)
