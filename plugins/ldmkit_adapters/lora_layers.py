"""Low-rank updates on one layer, from any number of LoRA adapters, merged or computed beside it.

Each adapted layer carries one :class:`LoraSlot`. Merged updates are written into the weight as
``base + sum(scale * factor * up @ down)``, always from a copy of the weight taken before the first
merge, so removing adapters in any order and switching scales never accumulates rounding: when the
last merged update goes, the copy is put back and the weight is bit for bit what it was. Unmerged
updates run in a forward hook, ``out + sum(scale * factor * up(down(x)))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LoraSlot", "LoraUpdate", "slot_of", "weight_of"]

_ATTR = "_ldmkit_lora_slot"


@dataclass
class LoraUpdate:
    """One adapter's update of one layer: ``scale * factor * up @ down``."""

    down: Tensor  # (rank, in[, kh, kw])
    up: Tensor  # (out, rank[, 1, 1])
    factor: float  # alpha / rank
    scale: float = 1.0

    def delta(self, weight: Tensor) -> Tensor:
        """The update of ``weight`` (its shape, float32)."""
        up = self.up.to(device=weight.device, dtype=torch.float32).flatten(1)  # (out, rank)
        down = self.down.to(device=weight.device, dtype=torch.float32).flatten(1)  # (rank, in * kh * kw)
        return (up @ down).reshape(weight.shape) * (self.scale * self.factor)

    def output(self, module: nn.Module, x: Tensor) -> Tensor:
        """``scale * factor * up(down(x))`` computed through the rank-r bottleneck."""
        down = self.down.to(device=x.device, dtype=x.dtype)
        up = self.up.to(device=x.device, dtype=x.dtype)
        weight = weight_of(module)
        if isinstance(module, nn.Linear):
            h = F.linear(F.linear(x, down.flatten(1)), up.flatten(1))  # (..., out)
        else:
            assert isinstance(module, (nn.Conv1d, nn.Conv2d))
            spatial = weight.dim() - 2
            down = down.reshape(down.shape[0], *weight.shape[1:])  # (rank, in, *kernel)
            up = up.reshape(up.shape[0], up.shape[1], *(1,) * spatial)  # (out, rank, 1...)
            h = module._conv_forward(x, down, None)  # the module's stride, padding and dilation
            h = (F.conv1d if spatial == 1 else F.conv2d)(h, up)  # (B, out, *spatial)
        return h * (self.scale * self.factor)


class LoraSlot:
    """The updates of one layer, keyed by adapter id."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.base: Tensor | None = None  # the weight before the first merge
        self.merged: dict[int, LoraUpdate] = {}
        self.unmerged: dict[int, LoraUpdate] = {}
        self.hook: torch.utils.hooks.RemovableHandle | None = None

    def add(self, owner: int, update: LoraUpdate, merge: bool) -> None:
        (self.merged if merge else self.unmerged)[owner] = update
        self.refresh()

    def drop(self, owner: int) -> None:
        self.merged.pop(owner, None)
        self.unmerged.pop(owner, None)
        self.refresh()

    def refresh(self) -> None:
        """Write the merged updates into the weight and (un)install the forward hook."""
        weight = weight_of(self.module)
        with torch.no_grad():
            if self.merged:
                if self.base is None:
                    self.base = weight.detach().clone()
                total = self.base.to(torch.float32)
                for update in self.merged.values():
                    total = total + update.delta(weight)
                weight.copy_(total.to(weight.dtype))
            elif self.base is not None:
                weight.copy_(self.base)
                self.base = None
        if self.unmerged and self.hook is None:
            self.hook = self.module.register_forward_hook(self._forward_hook)
        elif not self.unmerged and self.hook is not None:
            self.hook.remove()
            self.hook = None
        if not self.merged and not self.unmerged:
            delattr(self.module, _ATTR)

    def _forward_hook(self, module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> Tensor:
        for update in self.unmerged.values():
            out = out + update.output(module, args[0])
        return out


def weight_of(module: nn.Module) -> Tensor:
    """The layer's weight (a LoRA-capable layer always has one)."""
    weight = module.weight
    assert isinstance(weight, Tensor)
    return weight


def slot_of(module: nn.Module) -> LoraSlot:
    """The module's slot, made on first use (removed again when its last update goes)."""
    slot = getattr(module, _ATTR, None)
    if slot is None:
        slot = LoraSlot(module)
        setattr(module, _ATTR, slot)
    return slot
