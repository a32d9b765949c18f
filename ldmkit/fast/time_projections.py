"""The residual blocks' timestep-embedding projections as one matrix product, for the compiled fast path.

Every residual block of a latent diffusion UNet projects the same timestep embedding with its own
``emb_layers = Sequential(SiLU, Linear)``: SD v1 has 25 such products per call, each a few
microseconds on a GPU for a handful of rows, and at batch 2 they add up to about 2% of a step.
Here each block's ``emb_layers`` becomes a slice of one shared projection whose weight is the
blocks' weights stacked (a copy, made once). Every block still computes its output from its own
input, so the swap is correct whatever the blocks receive; it is fast only once the compiler
computes the shared product once: :func:`merge_identical_ops`, run by the compiler as a pass
(:mod:`ldmkit.fast.merge_pass`), merges the identical products (same operator, same inputs) that
the slices leave in the traced graph.
Without the compiler each block would compute the whole stacked product, so the fast path swaps
only when it compiles.
"""

from __future__ import annotations

import logging
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ldmkit.fast.shared_products import ColumnSlice, StackedLinear, share_products
from ldmkit.fast.support import structural_copy

__all__ = ["SharedTimeProjection", "TimeProjectionSlice", "merge_identical_ops", "with_shared_time_projections"]

log = logging.getLogger(__name__)


class SharedTimeProjection(StackedLinear):
    """``Linear(SiLU(emb))`` with the stacked weights of several blocks' projections (frozen copies)."""

    def forward(self, emb: Tensor) -> Tensor:
        return super().forward(F.silu(emb))  # (B, sum out)


class TimeProjectionSlice(ColumnSlice):
    """One block's ``emb_layers``: its columns of a :class:`SharedTimeProjection` of the block's input."""


def _time_projection(module: nn.Module) -> nn.Linear | None:
    """The Linear of ``module.emb_layers`` when that is ``Sequential(SiLU, Linear)``, else None."""
    layers = getattr(module, "emb_layers", None)
    if not isinstance(layers, nn.Sequential) or len(layers) != 2:
        return None
    act, linear = layers
    return linear if type(act) is nn.SiLU and type(linear) is nn.Linear else None


def with_shared_time_projections(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose blocks' ``emb_layers`` are slices of shared projections (others shared).

    Blocks whose projections take the same input width, dtype, device and bias-ness share one
    projection; a group of one is left alone.
    """
    module = structural_copy(module)
    blocks = [block for block in module.modules() if _time_projection(block) is not None]
    share_products(
        blocks,
        layer_of=_time_projection,  # type: ignore[arg-type]  # None excluded above
        install=lambda block, piece: setattr(block, "emb_layers", piece),
        stacked=SharedTimeProjection,
        slice_type=TimeProjectionSlice,
    )
    return module


def _pure(target: Any) -> bool:
    """Whether a call of ``target`` always gives the same result for the same inputs, without side effects."""
    if target is operator.getitem:
        return True
    if not isinstance(target, torch._ops.OpOverload):
        return False
    if target._schema.is_mutable or torch.Tag.nondeterministic_seeded in target.tags:
        return False
    return target not in (torch.ops.aten.empty.memory_format, torch.ops.aten.empty_strided.default)


def merge_identical_ops(graph: fx.Graph) -> int:
    """Replace every pure call that repeats an earlier one (same operator and arguments) by that one.

    Graphs with in-place operations are left alone (a read before a mutation is not the same
    value as one after it), and so is every value whose storage the graph returns (two outputs
    stay two tensors, also when they are views). Returns the number of calls removed.
    """
    nodes = list(graph.nodes)
    if any(n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload) and n.target._schema.is_mutable
           for n in nodes):  # fmt: skip
        return 0
    returned = _returned_storages(nodes)
    seen: dict[tuple[Any, ...], fx.Node] = {}
    merged = 0
    for node in nodes:
        if node.op == "get_attr":  # the same constant read twice
            key: tuple[Any, ...] = ("get_attr", node.target)
        elif node.op == "call_function" and node not in returned and _pure(node.target):
            try:
                key = (node.target, _hashable(node.args), _hashable(node.kwargs))
            except TypeError:  # an argument that cannot be hashed: never merged
                continue
        else:
            continue
        earlier = seen.setdefault(key, node)
        if earlier is not node:
            node.replace_all_uses_with(earlier)
            graph.erase_node(node)
            merged += 1
    return merged


def _returned_storages(nodes: list[fx.Node]) -> set[fx.Node]:
    """The nodes the graph returns, and the bases of those that are views (they share storage)."""
    todo = [a for n in nodes if n.op == "output" for a in n.all_input_nodes]
    found: set[fx.Node] = set()
    while todo:
        node = todo.pop()
        if node in found:
            continue
        found.add(node)
        target = node.target
        if isinstance(target, torch._ops.OpOverload) and any(r.alias_info for r in target._schema.returns):
            todo += [a for a in node.args if isinstance(a, fx.Node)][:1]  # a view's base is its first argument
    return found


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_hashable(v) for v in value))
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    hash(value)  # raises TypeError for what cannot be a key
    return (type(value).__name__, value)
