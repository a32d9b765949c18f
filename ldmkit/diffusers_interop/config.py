"""Reading a diffusers model config against the class's constructor defaults, for components' translations."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ldmkit.errors import SpecError

__all__ = ["DIFFUSERS_VERSION", "ConfigReader"]

DIFFUSERS_VERSION = "0.27.0"
"""What a folder written by ldmkit claims to be written by (diffusers reads the version only to warn)."""


class ConfigReader:
    """Reads a diffusers model config against that class's constructor defaults.

    ``get`` falls back to the default (older folders omit keys); ``expect`` fails with a SpecError
    when a value is one ldmkit does not implement; ``finish`` rejects keys the class does not know
    unless their value is null/false (a newer diffusers option left off).
    """

    def __init__(self, config: Mapping[str, Any], defaults: Mapping[str, Any], what: str) -> None:
        self.config = dict(config)
        self.defaults = dict(defaults)
        self.what = what

    def get(self, key: str) -> Any:
        """The value of ``key``, or the class's default when the config leaves it out."""
        return self.config.get(key, self.defaults.get(key))

    def expect(self, key: str, allowed: Iterable[Any], why: str = "") -> Any:
        """The value of ``key`` when it is one of ``allowed``; SpecError (with ``why``) otherwise."""
        value = self.get(key)
        allowed = list(allowed)
        if value not in allowed:
            shown = " or ".join(repr(a) for a in allowed)
            reason = f" ({why})" if why else ""
            raise SpecError(f"{self.what}: {key}={value!r} is not supported; ldmkit needs {shown}{reason}")
        return value

    def integer(self, key: str, minimum: int = 1) -> int:
        """The value of ``key`` as an integer of at least ``minimum``; SpecError otherwise."""
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise SpecError(f"{self.what}: {key} must be an integer >= {minimum}, got {value!r}")
        return value

    def int_list(self, key: str, length: int | None = None) -> list[int]:
        """A list of positive integers (one integer repeated ``length`` times); SpecError otherwise."""
        value = self.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and length is not None:
            value = [value] * length
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
        ):
            raise SpecError(f"{self.what}: {key} must be a list of positive integers, got {value!r}")
        if length is not None and len(value) != length:
            raise SpecError(f"{self.what}: {key} has {len(value)} entries, expected {length} (one per block)")
        return list(value)

    def str_list(self, key: str) -> list[str]:
        """A list of names; SpecError otherwise."""
        value = self.get(key)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise SpecError(f"{self.what}: {key} must be a list of block type names, got {value!r}")
        return list(value)

    def finish(self) -> None:
        """SpecError naming the keys the class does not know (null/false values are let through)."""
        unknown = sorted(
            k
            for k, v in self.config.items()
            if not k.startswith("_") and k not in self.defaults and v not in (None, False)
        )
        if unknown:
            raise SpecError(f"{self.what}: options ldmkit does not know: {', '.join(unknown)}")
