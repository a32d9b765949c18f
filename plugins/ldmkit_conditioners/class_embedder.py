"""``class-embedder``: class ids -> a learned embedding (cross-attention) or passed through (``vector``)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

import ldmkit
from ldmkit import Conditioner, Conditioning, InputError
from ldmkit.checks import check_batch, index_tensor
from ldmkit.interfaces import Slot
from ldmkit_conditioners.compvis import ClassEmbedderCompVis
from ldmkit_conditioners.diffusers import ClassEmbedderDiffusers


class ClassEmbedder(ClassEmbedderCompVis, ClassEmbedderDiffusers, Conditioner):
    """Class ids (B,) -> (B, 1, embed_dim) for cross-attention, as the CompVis ``ClassEmbedder``.

    With ``target: vector`` the ids are handed to the UNet unchanged (its ``label_emb`` embeds them)
    and this conditioner has no weights. ``null_class`` is the id used for the unconditional
    (classifier-free guidance) input; without it ``unconditional`` raises.
    """

    name = "class-embedder"
    example_params = {"embed_dim": 8, "n_classes": 5, "null_class": 4}
    slots: tuple[Slot, ...] = ("crossattn", "vector")  # one of them, chosen by ``target``

    class Params(ldmkit.Params):
        embed_dim: int = Field(gt=0, description="embedding width (the UNet's context_dim)")
        n_classes: int = Field(1000, gt=0)
        """Number of classes; ids lie in [0, n_classes)."""
        key: str = Field("class", description="accepted for CompVis configs; unused")
        target: Literal["crossattn", "vector"] = "crossattn"
        """crossattn: a one-token context of width embed_dim; vector: the ids go to the UNet's label_emb."""
        null_class: int | None = Field(None, description="class id that means 'no class' (for guidance)")

        @model_validator(mode="after")
        def _null_in_range(self):
            if self.null_class is not None and not 0 <= self.null_class < self.n_classes:
                raise ValueError(f"null_class {self.null_class} is outside [0, n_classes={self.n_classes})")
            return self

    params: Params

    def example_input(self, batch: int) -> Tensor:
        return torch.arange(batch) % max(self.params.n_classes - 1, 1)  # (B,) class ids

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        self.slots = (self.params.target,)
        if self.params.target == "crossattn":
            self.embedding = torch.nn.Embedding(self.params.n_classes, self.params.embed_dim)

    def _embed(self, ids: torch.Tensor) -> Conditioning:
        if self.params.target == "vector":
            return Conditioning(vector=ids)  # (B,)
        return Conditioning(crossattn=self.embedding(ids[:, None]))  # (B, 1, embed_dim)

    def forward(self, raw: Any) -> Conditioning:
        """``raw``: class ids, a LongTensor (B,) or a list of ints, each in [0, n_classes)."""
        ids = index_tensor(raw, what="class ids", high=self.params.n_classes, ndim=1, device=self.device)
        return self._embed(ids)

    def unconditional(self, batch: int) -> Conditioning:
        """``null_class`` for every sample."""
        if self.params.null_class is None:
            raise InputError(
                "class-embedder: unconditional conditioning needs null_class (the id that means 'no class') "
                "in its params; pass an explicit unconditional label instead"
            )
        ids = torch.full((check_batch(batch),), self.params.null_class, dtype=torch.long, device=self.device)
        return self._embed(ids)
