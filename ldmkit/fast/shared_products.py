"""Several layers' matrix products of one input as one product: stacked weights and the column slices that read them.

Where many layers project the same tensor (every residual block the timestep embedding, every
cross-attention the text tokens), each layer can become a :class:`ColumnSlice` of one
:class:`StackedLinear` whose weight is the layers' weights stacked (a copy, made once). Every layer
still computes its output from its own input, so the swap is correct whatever each receives; it is
fast only once the compiler computes the identical products once
(:func:`ldmkit.fast.time_projections.merge_identical_ops`, run as a pass). Uncompiled, each layer
would compute the whole stacked product, so the fast path swaps only when it compiles.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ColumnSlice", "StackedLinear", "share_products"]

log = logging.getLogger(__name__)


class StackedLinear(nn.Module):
    """One linear layer with the stacked weights of several (frozen copies)."""

    def __init__(self, layers: list[nn.Linear]) -> None:
        super().__init__()
        with torch.no_grad():
            weights: list[Tensor] = [lyr.weight for lyr in layers]
            biases: list[Tensor] = [lyr.bias for lyr in layers if lyr.bias is not None]
            self.weight = nn.Parameter(torch.cat(weights), requires_grad=False)  # (sum out, in)
            self.bias = nn.Parameter(torch.cat(biases), requires_grad=False) if biases else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)  # (..., sum out)


class ColumnSlice(nn.Module):
    """One layer: its columns ``start:stop`` of a stacked product of the layer's own input."""

    def __init__(self, shared: nn.Module, start: int, stop: int) -> None:
        super().__init__()
        self.shared = shared
        self.start, self.stop = start, stop

    def forward(self, x: Tensor) -> Tensor:
        return self.shared(x)[..., self.start : self.stop]  # (..., out), a strided view

    def extra_repr(self) -> str:
        return f"columns {self.start}:{self.stop} of the shared projection"


def share_products(
    owners: list[nn.Module],
    layer_of: Callable[[nn.Module], nn.Linear],
    install: Callable[[nn.Module, nn.Module], None],
    stacked: Callable[[list[nn.Linear]], nn.Module] = StackedLinear,
    slice_type: type[ColumnSlice] = ColumnSlice,
) -> int:
    """Give the owners whose layers take the same input width, dtype, device and bias-ness one stacked
    product; ``install(owner, piece)`` puts each owner's slice in place of its layer. A group of one is
    left alone. Returns how many layers now read a shared product."""
    groups: dict[Hashable, list[nn.Module]] = {}
    for owner in owners:
        layer = layer_of(owner)
        key = (layer.in_features, layer.weight.dtype, layer.weight.device, layer.bias is None)
        groups.setdefault(key, []).append(owner)
    shared_layers = 0
    for members in groups.values():
        if len(members) < 2:
            continue
        layers = [layer_of(m) for m in members]
        shared = stacked(layers)
        start = 0
        for owner, layer in zip(members, layers, strict=True):
            install(owner, slice_type(shared, start, start + layer.out_features))
            start += layer.out_features
        shared_layers += len(members)
        log.debug("%d projections share one product of %d columns", len(members), start)
    return shared_layers
