"""JSON reading shared by specs, configs, checkpoint headers, layouts and PNG metadata.

Stricter than :func:`json.loads` where a document written by someone else could do harm or lose
data: duplicate keys are refused (``json`` keeps the last silently), nesting is limited before
parsing (100,000 nested brackets end in a ``RecursionError`` deep inside the parser), and a number
literal is limited in length (a 5000-digit integer trips Python's own digit limit with a message
about ``sys.set_int_max_str_digits``). Every refusal is a :class:`ValueError` subclass, so callers
turn it into their own typed error.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "MAX_NUMBER_CHARS",
    "DuplicateKeyError",
    "JSONLimitError",
    "check_depth",
    "loads",
    "reject_duplicate_keys",
]

MAX_DEPTH = 100  # objects and arrays inside each other; specs and metadata nest about 10 deep
MAX_NUMBER_CHARS = 100  # characters of one number literal; float64 needs at most 25

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)  # a JSON string literal (brackets inside it do not nest)
_BRACKET = re.compile(r"[\[\]{}]")


class DuplicateKeyError(ValueError):
    """A JSON object names the same key twice (json.loads would silently keep the last)."""


class JSONLimitError(ValueError):
    """A JSON document nests deeper, or writes a longer number, than :mod:`ldmkit.strict_json` reads."""


def reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for :func:`json.loads` that refuses a repeated key."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(f"duplicate key {key!r}")
        out[key] = value
    return out


def check_depth(text: str, max_depth: int = MAX_DEPTH) -> None:
    """Refuse ``text`` when its arrays and objects nest deeper than ``max_depth``, without parsing it."""
    if text.count("[") + text.count("{") <= max_depth:
        return  # too few brackets to nest that deep: the common case costs two counts
    depth = 0
    for match in _BRACKET.finditer(_STRING.sub("", text)):
        if match.group() in "[{":
            depth += 1
            if depth > max_depth:
                raise JSONLimitError(f"nested more than {max_depth} deep (at character {match.start()})")
        else:
            depth -= 1  # an unbalanced closer is the parser's error to report


def _number(parse: type[int] | type[float]):
    def convert(literal: str) -> int | float:
        if len(literal) > MAX_NUMBER_CHARS:
            raise JSONLimitError(
                f"a number of {len(literal)} characters ({literal[:12]}...); at most {MAX_NUMBER_CHARS} are read"
            )
        return parse(literal)

    return convert


_PARSE_INT = _number(int)
_PARSE_FLOAT = _number(float)


def loads(text: str | bytes, max_depth: int = MAX_DEPTH, **kwargs: Any) -> Any:
    """:func:`json.loads` with duplicate keys, deep nesting and overlong numbers refused.

    Bytes must be UTF-8 (``UnicodeDecodeError``, a ValueError). Raises ValueError subclasses
    only: :class:`DuplicateKeyError`, :class:`JSONLimitError`, :class:`json.JSONDecodeError`.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8")
    check_depth(text, max_depth)
    kwargs.setdefault("parse_int", _PARSE_INT)
    kwargs.setdefault("parse_float", _PARSE_FLOAT)
    try:
        return json.loads(text, object_pairs_hook=reject_duplicate_keys, **kwargs)
    except RecursionError:  # only when max_depth was raised past what the parser can recurse
        raise JSONLimitError("nested too deep for the JSON parser") from None
