"""``textual-inversion``: learned token embeddings for the text encoder, each bound to a token.

Files read:

* safetensors with ``emb_params`` (n, D) (the web UIs' layout), or diffusers' ``{token: (D,) or (n, D)}``
  with a single entry;
* the legacy ``.pt`` layout ``{"string_to_param": {"*": (n, D)}, "name": ...}``, through the core's
  scanned pickle loader (a file referring to anything but tensors and plain values is refused).

An embedding of n vectors binds ``token, token_1, ..., token_{n-1}``; a prompt that says ``token``
uses all n, as diffusers' ``load_textual_inversion`` does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field
from torch import Tensor

import ldmkit
from ldmkit.adapters import Adapter, LearnsTokens
from ldmkit.checkpoints import detect_format, load_checkpoint
from ldmkit.errors import CheckpointError, InputError

if TYPE_CHECKING:
    from ldmkit.pipeline import Pipeline

__all__ = ["TextualInversion", "read_embedding"]

log = logging.getLogger(__name__)


class TextualInversion(Adapter):
    """A textual-inversion embedding bound to a token of the text conditioner's tokenizer."""

    name = "textual-inversion"

    class Params(ldmkit.Params):
        path: str = Field(min_length=1, description="the embedding file (.safetensors, or a legacy .pt)")
        token: str | None = Field(
            None,
            min_length=1,
            pattern=r"^\S+$",
            description="the token prompts use (default: the one the file names, for files that name one)",
        )

    params: Params

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        self.tokens: list[str] = []

    def apply(self, pipeline: Pipeline) -> None:
        """Teach the pipeline's text conditioner the token(s)."""
        self.check_not_applied()
        conditioner = pipeline.conditioner
        if not isinstance(conditioner, LearnsTokens):
            kind = type(conditioner).__name__ if conditioner is not None else "none"
            raise InputError(f"textual inversion needs a text conditioner that learns tokens; this pipeline has {kind}")
        token, vectors = read_embedding(self.params.path, self.params.token)  # (n, D)
        if vectors.shape[1] != conditioner.token_embedding_dim:
            raise InputError(
                f"{self.params.path}: embeddings of width {vectors.shape[1]}, but the text encoder's tokens have "
                f"{conditioner.token_embedding_dim}"
            )
        names = [token] + [f"{token}_{i}" for i in range(1, vectors.shape[0])]
        conditioner.add_token_embeddings(dict(zip(names, vectors, strict=True)))
        self.tokens = names
        self.pipeline = pipeline
        log.info("textual inversion %s: token %s (%d vectors)", self.params.path, token, len(names))

    def remove(self) -> None:
        """Forget the token(s) again."""
        if self.pipeline is not None and isinstance(self.pipeline.conditioner, LearnsTokens):
            self.pipeline.conditioner.remove_token_embeddings(self.tokens)
        self.tokens = []
        self.pipeline = None

    def describe(self) -> str:
        return f"{self.name} ({self.params.path} as {self.tokens[0] if self.tokens else self.params.token})"


def read_embedding(path: str | Path, token: str | None) -> tuple[str, Tensor]:
    """(token, vectors (n, D) float32) of an embedding file; ``token`` None takes the file's own name."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such embedding file")
    data = load_checkpoint(path)  # safetensors as they are; a pickle only after its scan
    found, named = _vectors(data, path, detect_format(path) == "safetensors")
    chosen = token or named
    if chosen is None:
        raise InputError(f"{path}: the file names no token; give one (token: ... / --embedding PATH:TOKEN)")
    if found.dim() == 1:
        found = found[None]  # (1, D)
    if found.dim() != 2 or found.shape[0] < 1 or not found.is_floating_point():
        raise CheckpointError(f"{path}: the embedding has shape {tuple(found.shape)}; expected (n, dim) floats")
    return chosen, found.detach().float()


def _vectors(data: dict[Any, Any], path: Path, safetensors: bool) -> tuple[Tensor, str | None]:
    """(the embedding tensor, the token the file names or None) of a loaded file."""
    if "string_to_param" in data:  # the legacy .pt layout
        table = data["string_to_param"]
        if not isinstance(table, dict) or len(table) != 1 or not isinstance(next(iter(table.values())), Tensor):
            raise CheckpointError(f"{path}: string_to_param must hold exactly one tensor")
        name = data.get("name")
        return next(iter(table.values())), name if isinstance(name, str) and name.strip() else None
    if "emb_params" in data and isinstance(data["emb_params"], Tensor):
        return data["emb_params"], None
    tensors = {k: v for k, v in data.items() if isinstance(v, Tensor)}
    if safetensors and len(tensors) == 1 and len(data) == 1:  # diffusers' {token: tensor}
        ((key, value),) = tensors.items()
        return value, key
    keys = ", ".join(map(str, list(data)[:10]))
    raise CheckpointError(
        f"{path}: not a textual-inversion file (expected 'emb_params', 'string_to_param' or one token -> tensor; "
        f"found {keys})"
    )
