"""The one strict base model of ldmkit and the one way a validation error is worded for users.

Every component ``Params``, spec section and options model derives from :class:`StrictModel`, so
they all reject unknown keys and non-finite numbers the same way, and every place that turns a
pydantic ``ValidationError`` into a message calls :func:`format_validation_error`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["StrictModel", "format_errors", "format_validation_error"]


class StrictModel(BaseModel):
    """Base of every settings model: unknown keys rejected, no type coercion, finite numbers only.

    A field is described by ``Field(description=...)`` or by a docstring right under it; both end
    up in the JSON Schema and the spec reference.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True)


def format_errors(errors: Iterable[Mapping[str, Any]], prefix: str = "", top: str | None = "(top level)") -> str:
    """Pydantic error records as one ``field.path: message`` per problem, joined by ``"; "``.

    A problem of the whole value (no field path) is named ``top``, or given as the bare message
    when ``top`` is None (where the caller's message already names the value).
    """
    head = [p for p in prefix.split(".") if p] if prefix else []
    lines = []
    for err in errors:
        loc = ".".join(str(p) for p in head + list(err["loc"])) or top
        message = str(err["msg"]).removeprefix("Value error, ")  # pydantic's prefix for a validator's ValueError
        lines.append(f"{loc}: {message}" if loc else message)
    return "; ".join(lines)


def format_validation_error(exc: ValidationError, prefix: str = "", top: str | None = "(top level)") -> str:
    """The message users see for ``exc``: one ``field.path: message`` per problem, under ``prefix``."""
    return format_errors(exc.errors(), prefix, top)
