"""The cross-attentions' key/value projections of the conditioning as one matrix product, for the compiled fast path.

Every cross-attention of a text-conditioned UNet projects the same conditioning tokens to its keys
and values: SD v1 has 16 such products a call, each a few microseconds on a GPU at batch 2. With
``fuse_qkv`` each attention module computes its keys and values by one product
(:class:`ldmkit.fast.attention.FlashAttention`'s ``to_kv``); here those of all cross-attentions
become column slices of one stacked product (:mod:`ldmkit.fast.shared_products`), which the
compiler's merge pass then computes once for all of them.

A module counts as a cross-attention when its keys are projected from another width than its
queries (a context of its own); one whose widths agree may be a self-attention, and keeps its own
product (correct either way, but a self-attention's input differs layer by layer, so the stacked
product would be computed in full for each).
"""

from __future__ import annotations

from torch import nn

from ldmkit.fast.attention import FlashAttention
from ldmkit.fast.shared_products import share_products
from ldmkit.fast.support import structural_copy

__all__ = ["with_shared_context_projections"]


def _cross_attention(module: nn.Module) -> bool:
    """Whether ``module`` is a flash attention module with a fused k/v product of a context of another width."""
    if not isinstance(module, FlashAttention) or type(module.to_kv) is not nn.Linear:
        return False
    query_width = getattr(module.to_q, "in_features", None)
    return query_width is not None and query_width != module.to_kv.in_features


def with_shared_context_projections(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose cross-attentions' k/v products are slices of shared ones (others shared).

    Modules whose products take the same context width, dtype, device and bias-ness share one.
    """
    module = structural_copy(module)
    owners = [m for m in module.modules() if _cross_attention(m)]
    share_products(owners, layer_of=_kv_product, install=lambda m, piece: setattr(m, "to_kv", piece))
    return module


def _kv_product(module: nn.Module) -> nn.Linear:
    layer = module.to_kv
    assert isinstance(layer, nn.Linear)  # what _cross_attention checked
    return layer
