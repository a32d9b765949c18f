"""``lora``: low-rank updates of the denoiser's and the text encoder's layers, read from a file."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from pydantic import Field
from torch import Tensor, nn

import ldmkit
from ldmkit.adapters import Adapter
from ldmkit.errors import CheckpointError, InputError
from ldmkit_adapters.layer_names import LayerIndex
from ldmkit_adapters.lora_files import LoraPair, Part, parse_lora, read_lora
from ldmkit_adapters.lora_layers import LoraUpdate, slot_of
from ldmkit_adapters.lora_training import DEFAULT_LAYERS, TrainedLayer, fresh_layers, save_kohya

if TYPE_CHECKING:
    from ldmkit.pipeline import Pipeline

__all__ = ["UNSAVED", "LoraAdapter", "match_layers"]

log = logging.getLogger(__name__)

_PARTS: dict[Part, str] = {"unet": "denoiser", "text_encoder": "conditioner"}
_SHOWN = 20
UNSAVED = "(not saved)"
"""The ``path`` of a LoRA made by :meth:`LoraAdapter.new` until it is saved."""


def _listing(keys: list[str]) -> str:
    more = len(keys) - _SHOWN
    return ", ".join(keys[:_SHOWN]) + (f" (+{more} more)" if more > 0 else "")


class LoraAdapter(Adapter):
    """A LoRA file (kohya or diffusers/PEFT layout) added to the denoiser and the text encoder.

    Each layer ``W`` named in the file becomes ``W + scale * (alpha / rank) * up @ down``: merged into
    the weights (``merge: true``), or computed beside them on every call (the default, quick to switch
    and to rescale with :meth:`set_scale`). :meth:`remove` restores the weights bit for bit.
    """

    name = "lora"

    class Params(ldmkit.Params):
        path: str = Field(min_length=1, description="the LoRA file (.safetensors, or a .pt holding only tensors)")
        scale: float = Field(1.0, ge=-100.0, le=100.0, description="how much of the update to add (0: none)")
        merge: bool = Field(False, description="write the update into the weights instead of computing it per call")
        strict: bool = Field(True, description="False: layers the pipeline lacks are logged and skipped, not refused")

    params: Params

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        self.merged = self.params.merge
        self._layers: list[nn.Module] = []
        self._trained: list[TrainedLayer] = []
        self._shape: tuple[int, float | None] = (0, None)  # (rank, alpha) of a LoRA made by new()

    @classmethod
    def new(
        cls,
        pipeline: Pipeline,
        *,
        rank: int = 4,
        alpha: float | None = None,
        layers: Mapping[Part, str] | None = None,
        generator: torch.Generator | None = None,
    ) -> LoraAdapter:
        """A new LoRA to train, applied (unmerged) to ``pipeline`` and changing nothing yet.

        ``layers`` maps ``unet`` / ``text_encoder`` to a regular expression of ldmkit layer names
        (default :data:`~ldmkit_adapters.lora_training.DEFAULT_LAYERS` for the UNet only). Train
        :meth:`parameters` (the base weights stay as they are), then :meth:`save` it in kohya's layout.
        """
        adapter = cls(cls.Params(path=UNSAVED))
        chosen: dict[Part, str] = dict(layers) if layers is not None else {"unet": DEFAULT_LAYERS["unet"]}
        adapter._trained = fresh_layers(pipeline, rank=rank, alpha=alpha, layers=chosen, generator=generator)
        adapter._shape = (rank, alpha)
        pipeline.add_adapter(adapter)  # listed with the pipeline's adapters, removed like them
        return adapter

    def parameters(self) -> list[Tensor]:
        """The trainable tensors (down and up of every layer) of a LoRA made by :meth:`new`."""
        return [t for layer in self._trained for t in (layer.update.down, layer.update.up)]

    def save(self, path: str | Path) -> Path:
        """Write a LoRA made by :meth:`new` as a kohya-layout safetensors file; ``params.path`` becomes it."""
        if not self._trained:
            raise InputError("only a LoRA made by LoraAdapter.new can be saved (a loaded one is its file already)")
        rank, alpha = self._shape
        written = save_kohya(self._trained, path, rank, alpha)
        self.params = self.Params.model_validate({**self.params.model_dump(), "path": str(written)})
        return written

    @property
    def scale(self) -> float:
        return self.params.scale

    def apply(self, pipeline: Pipeline) -> None:
        """Read the file and add its updates to ``pipeline``'s denoiser and conditioner."""
        self.check_not_applied()
        if self._trained:  # made by new(): its layers are in memory
            for layer in self._trained:
                slot_of(layer.module).add(id(self), layer.update, merge=False)
            self._layers = [layer.module for layer in self._trained]
            self.pipeline = pipeline
            return
        path = self.params.path
        pairs, unknown = parse_lora(read_lora(path), path)
        matched, missing = match_layers(pipeline, pairs)
        missing = unknown + missing
        if missing and self.params.strict:
            raise CheckpointError(
                f"{path}: {len(missing)} LoRA keys match no layer of this pipeline: {_listing(missing)} "
                "(strict=False skips them)"
            )
        if not matched:
            raise CheckpointError(f"{path}: no LoRA key matches a layer of this pipeline")
        if missing:
            log.warning("%s: skipped %d LoRA keys that match no layer: %s", path, len(missing), _listing(missing))
        owner = id(self)
        updates = [(module, _update(pair, module, path, self.params.scale)) for module, pair in matched]
        for module, update in updates:
            slot_of(module).add(owner, update, self.params.merge)
        self._layers = [module for module, _ in updates]
        self.pipeline = pipeline
        log.info("applied LoRA %s to %d layers (scale %g)", path, len(updates), self.params.scale)

    def set_scale(self, scale: float) -> None:
        """Change the scale of this applied adapter (merged ones are re-merged from the original weights)."""
        self.params = self.Params.model_validate({**self.params.model_dump(), "scale": scale})
        for module in self._layers:
            slot = slot_of(module)
            update = slot.merged.get(id(self)) or slot.unmerged.get(id(self))
            if update is not None:
                update.scale = self.params.scale
            slot.refresh()

    def remove(self) -> None:
        """Take this adapter's updates out again; the weights are bit for bit those before :meth:`apply`."""
        for module in self._layers:
            slot_of(module).drop(id(self))
        self._layers = []
        self.pipeline = None


def match_layers(pipeline: Pipeline, pairs: list[LoraPair]) -> tuple[list[tuple[nn.Module, LoraPair]], list[str]]:
    """(module, pair) for each pair naming a layer of the pipeline, and the file keys of the others."""
    indexes: dict[Part, LayerIndex | None] = {}
    matched: list[tuple[nn.Module, LoraPair]] = []
    missing: list[str] = []
    for pair in pairs:
        if pair.part not in indexes:
            component = getattr(pipeline, _PARTS[pair.part], None)
            indexes[pair.part] = LayerIndex(component) if isinstance(component, nn.Module) else None
        index = indexes[pair.part]
        found = index.find(pair.layer, pair.style == "underscored") if index is not None else None
        if found is None:
            missing.append(pair.key)
        else:
            matched.append((found[1], pair))
    return matched, missing


def _update(pair: LoraPair, module: nn.Module, path: str, scale: float) -> LoraUpdate:
    """The pair as an update of ``module``, its shapes checked against the weight."""
    assert pair.down is not None and pair.up is not None
    weight: Tensor = module.weight  # type: ignore[assignment]
    down, up = pair.down, pair.up
    fan_in = weight[0].numel()  # in * kh * kw
    if up.shape[0] != weight.shape[0] or down[0].numel() != fan_in:
        raise CheckpointError(
            f"{path}: {pair.key}: down {tuple(down.shape)} and up {tuple(up.shape)} do not fit the layer's weight "
            f"{tuple(weight.shape)}"
        )
    if down.dim() == 4 and weight.dim() == 4 and tuple(down.shape[2:]) != tuple(weight.shape[2:]):
        raise CheckpointError(f"{path}: {pair.key}: kernel {tuple(down.shape[2:])} differs from the layer's")
    if getattr(module, "groups", 1) != 1:
        raise InputError(f"{path}: {pair.key}: LoRA on grouped convolutions is not supported")
    return LoraUpdate(down.detach().clone(), up.detach().clone(), pair.factor, scale)
