"""Adapters: changes applied to a built pipeline and removed again exactly (LoRA, textual inversion).

An adapter is a component kind of its own, registered through the ``register_adapters`` hook: a class
with a ``name``, a ``Params`` model, and the methods :meth:`Adapter.apply` and :meth:`Adapter.remove`.
Unlike the other components it holds no weights of the pipeline: it changes those of a pipeline it is
applied to (LoRA adds low-rank updates to the denoiser's and the text encoder's layers) or teaches a
component something new (textual inversion binds new tokens to learned embedding vectors).

A pipeline holds the adapters applied to it (:attr:`ldmkit.Pipeline.adapters`); a spec lists them
under ``adapters:`` and ``Pipeline.load`` applies them after the weights are loaded. A ``path`` param
that is relative is resolved against the spec's folder (:func:`resolve_paths`).

Components that can learn new tokens implement :class:`LearnsTokens`; the textual-inversion adapter
finds the text encoder by that protocol, never by its class.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from torch import Tensor

from ldmkit.errors import InputError
from ldmkit.interfaces import _Configurable

__all__ = ["Adapter", "LearnsTokens", "file_sha256", "resolve_paths"]


class Adapter(_Configurable, ABC):
    """A change applied to a pipeline (:meth:`apply`) and undone exactly (:meth:`remove`).

    One instance is applied to at most one pipeline at a time. ``merged`` says whether the change
    is written into the weights (cheap to run, slower to switch) or computed beside them.
    """

    kind: ClassVar[str] = "adapter"
    merged: bool = False

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.pipeline: Any = None  # the ldmkit.Pipeline applied to (typed loosely: the pipeline imports this module)

    @property
    def applied(self) -> bool:
        """Whether this adapter is applied to a pipeline now."""
        return self.pipeline is not None

    @abstractmethod
    def apply(self, pipeline: Any) -> None:
        """Change ``pipeline``'s components; set ``self.pipeline``. Raise InputError if already applied."""

    @abstractmethod
    def remove(self) -> None:
        """Undo :meth:`apply` exactly (weights bit for bit); set ``self.pipeline`` back to None."""

    def check_not_applied(self) -> None:
        """Raise :class:`InputError` when this adapter is applied already (one pipeline at a time)."""
        if self.pipeline is not None:
            raise InputError(f"adapter {self.describe()} is applied already; remove it first")

    def describe(self) -> str:
        """A short human-readable name: the type and, when it has one, the file."""
        path = getattr(self.params, "path", None)
        return f"{self.name} ({path})" if path else self.name

    def record(self) -> dict[str, Any]:
        """What a picture's metadata stores to apply this adapter again: ``{type, params[, sha256]}``.

        The sha256 of the ``path`` param's file (when there is one) lets a replay check it has the same file.
        """
        params = self.params.model_dump(mode="json")
        out: dict[str, Any] = {"type": self.name, "params": params}
        path = params.get("path")
        if isinstance(path, str) and Path(path).is_file():
            out["sha256"] = file_sha256(path)
        return out


@runtime_checkable
class LearnsTokens(Protocol):
    """A component (a text conditioner) that can bind new tokens to embedding vectors."""

    @property
    def token_embedding_dim(self) -> int:
        """Width of one token embedding (what each new token's vector must have)."""
        ...

    def add_token_embeddings(self, embeddings: Mapping[str, Tensor]) -> None:
        """Make each token (a string) of ``embeddings`` stand for its (token_embedding_dim,) vector.

        A token the component knows already (from its vocabulary or added before) is an InputError.
        """
        ...

    def remove_token_embeddings(self, tokens: Iterable[str]) -> None:
        """Forget tokens added by :meth:`add_token_embeddings`."""
        ...


def resolve_paths(params: Mapping[str, Any], base: str | Path | None) -> dict[str, Any]:
    """``params`` with a relative ``path`` made absolute against ``base`` (a spec's folder; None: as it is)."""
    out = dict(params)
    path = out.get("path")
    if base is not None and isinstance(path, str) and path and not Path(path).is_absolute():
        out["path"] = str(Path(base) / path)
    return out


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
