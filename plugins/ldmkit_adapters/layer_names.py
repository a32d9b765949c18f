"""Which ldmkit layer a LoRA file's layer name means.

A file names layers as diffusers (or transformers) does, or as the module itself does (ldmkit's UNet
uses the CompVis names), with dots or, in kohya files, with underscores. The diffusers names come
from the component's own conversion (``to_diffusers``, see :mod:`ldmkit.conversions`): its tensors
share storage with the module, so each diffusers weight is matched to the ldmkit parameter it views.
"""

from __future__ import annotations

import logging

from torch import nn

from ldmkit.conversions import DiffusersContext
from ldmkit_adapters.lora_layers import weight_of

__all__ = ["LayerIndex", "LORA_LAYERS"]

log = logging.getLogger(__name__)

LORA_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
"""The layer kinds a LoRA update can be added to."""


class LayerIndex:
    """Layer names of one component -> its LoRA-capable modules, by dotted and by underscored name."""

    def __init__(self, component: nn.Module) -> None:
        layers: dict[str, nn.Module] = {
            name: m for name, m in component.named_modules() if isinstance(m, LORA_LAYERS) and name
        }
        self.layers = layers
        self.dotted: dict[str, str] = {name: name for name in layers}
        for theirs, ours in _diffusers_names(component, layers).items():
            self.dotted.setdefault(theirs, ours)
        underscored: dict[str, str | None] = {}
        for dotted, ours in self.dotted.items():
            key = dotted.replace(".", "_")
            underscored[key] = ours if underscored.get(key, ours) == ours else None  # None: two layers collide
        self.underscored = {k: v for k, v in underscored.items() if v is not None}

    def file_name(self, ours: str) -> str:
        """The name a file gives the layer ``ours``: its diffusers name where it has one, else its own."""
        theirs = [d for d, o in self.dotted.items() if o == ours and d != ours]
        return theirs[0] if theirs else ours

    def find(self, layer: str, underscored: bool) -> tuple[str, nn.Module] | None:
        """(ldmkit module name, module) of a file's layer name, or None."""
        name = (self.underscored if underscored else self.dotted).get(layer)
        return (name, self.layers[name]) if name is not None else None


def _diffusers_names(component: nn.Module, layers: dict[str, nn.Module]) -> dict[str, str]:
    """diffusers module name -> ldmkit module name, for the weights the component's conversion views 1:1."""
    to_diffusers = getattr(component, "to_diffusers", None)
    if not callable(to_diffusers):
        return {}
    try:
        model = to_diffusers(DiffusersContext())
    except Exception as exc:  # a component that cannot convert just has no diffusers names
        log.debug("%s has no diffusers names: %s", type(component).__name__, exc)
        return {}
    if model is None:
        return {}
    by_storage = {(weight_of(m).data_ptr(), weight_of(m).numel()): name for name, m in layers.items()}
    out: dict[str, str] = {}
    for key, tensor in model.state.items():
        if not key.endswith(".weight"):
            continue
        ours = by_storage.get((tensor.data_ptr(), tensor.numel()))
        if ours is not None:
            out[key[: -len(".weight")]] = ours
    return out
