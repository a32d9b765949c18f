"""Renaming state dicts between ldmkit's (CompVis) module paths and diffusers' module paths.

A model's correspondence is a list of :data:`Pair` ``(ldmkit prefix, diffusers prefix, converter)``:
each pair maps one submodule, and its converter translates the keys (and, where the layers differ
in kind, the tensor shapes) below that prefix. Every conversion is a pure reshape or split, so a
round trip reproduces the weights bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ldmkit.errors import CheckpointError


class Rename:
    """Renames leading submodule paths (``{"in_layers.0": "norm1"}``); other keys pass unchanged."""

    def __init__(self, table: Mapping[str, str] | None = None) -> None:
        self.table = dict(table or {})
        self.inverse = {v: k for k, v in self.table.items()}

    @staticmethod
    def _rename(key: str, table: Mapping[str, str]) -> str:
        for old, new in table.items():
            if key == old or key.startswith(old + "."):
                return new + key[len(old) :]
        return key

    def to_diffusers(self, sub: dict[str, Tensor]) -> dict[str, Tensor]:
        return {self._rename(k, self.table): v for k, v in sub.items()}

    def from_diffusers(self, sub: dict[str, Tensor]) -> dict[str, Tensor]:
        return {self._rename(k, self.inverse): v for k, v in sub.items()}


IDENTITY = Rename()


class ConvToLinear(Rename):
    """Renames, and turns 1x1 convolution weights (out, in, 1[, 1]) into linear weights (out, in)."""

    def __init__(self, table: Mapping[str, str], conv_dims: int) -> None:
        super().__init__(table)
        self.conv_dims = conv_dims

    def to_diffusers(self, sub: dict[str, Tensor]) -> dict[str, Tensor]:
        out = super().to_diffusers(sub)
        return {k: v.reshape(v.shape[0], v.shape[1]) if v.dim() > 2 else v for k, v in out.items()}

    def from_diffusers(self, sub: dict[str, Tensor]) -> dict[str, Tensor]:
        out = super().from_diffusers(sub)
        ones = (1,) * self.conv_dims
        return {k: v.reshape(*v.shape, *ones) if v.dim() == 2 else v for k, v in out.items()}


class FusedQKV:
    """The UNet's ``AttentionBlock`` (fused 1-D conv ``qkv``) <-> diffusers ``Attention`` (to_q, to_k, to_v).

    The fused channels are laid out [head][q|k|v][d] (legacy order) or [q|k|v][head][d] (new order);
    diffusers' separate projections hold [head][d].
    """

    def __init__(self, heads: int, new_order: bool) -> None:
        self.heads = heads
        self.new_order = new_order
        self.rest = ConvToLinear({"norm": "group_norm", "proj_out": "to_out.0"}, conv_dims=1)

    def _split(self, fused: Tensor) -> list[Tensor]:
        """(3C, ...) -> three (C, ...) tensors q, k, v."""
        tail = fused.shape[1:]
        if self.new_order:
            parts = fused.reshape(3, -1, *tail)  # (3, C, ...)
        else:
            parts = fused.reshape(self.heads, 3, -1, *tail).transpose(0, 1)  # (3, heads, d, ...)
        return [p.reshape(-1, *tail).contiguous() for p in parts.unbind(0)]

    def _fuse(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Three (C, ...) tensors -> (3C, ...)."""
        tail = q.shape[1:]
        if self.new_order:
            return torch.cat([q, k, v], dim=0)
        per_head = [t.reshape(self.heads, -1, *tail) for t in (q, k, v)]  # (heads, d, ...) each
        return torch.stack(per_head, dim=1).reshape(-1, *tail)  # (heads * 3 * d, ...)

    def to_diffusers(self, sub: dict[str, Tensor]) -> dict[str, Tensor]:
        sub = dict(sub)
        out: dict[str, Tensor] = {}
        for leaf in ("weight", "bias"):
            fused = sub.pop(f"qkv.{leaf}", None)
            if fused is None:
                continue
            if leaf == "weight":
                fused = fused.reshape(fused.shape[0], fused.shape[1])  # (3C, C)
            for name, part in zip(("to_q", "to_k", "to_v"), self._split(fused), strict=True):
                out[f"{name}.{leaf}"] = part
        out.update(self.rest.to_diffusers(sub))
        return out

    def from_diffusers(self, sub: dict[str, Tensor]) -> dict[str, Tensor]:
        sub = dict(sub)
        out: dict[str, Tensor] = {}
        for leaf in ("weight", "bias"):
            names = [f"{n}.{leaf}" for n in ("to_q", "to_k", "to_v")]
            if not any(n in sub for n in names):
                continue
            if not all(n in sub for n in names):
                raise CheckpointError(f"attention {leaf}: to_q, to_k and to_v must all be present")
            fused = self._fuse(*(sub.pop(n) for n in names))
            out[f"qkv.{leaf}"] = fused[..., None] if leaf == "weight" else fused  # (3C, C, 1)
        out.update(self.rest.from_diffusers(sub))
        return out


Converter = Rename | FusedQKV
Pair = tuple[str, str, Converter]


def _group(state: Mapping[str, Tensor], prefixes: Mapping[str, int], what: str) -> dict[int, dict[str, Tensor]]:
    """Split ``state`` by the longest matching module prefix; unmatched keys raise CheckpointError."""
    groups: dict[int, dict[str, Tensor]] = {}
    unmatched = []
    for key, value in state.items():
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            index = prefixes.get(".".join(parts[:cut]))
            if index is not None:
                groups.setdefault(index, {})[".".join(parts[cut:])] = value
                break
        else:
            unmatched.append(key)
    if unmatched:
        shown = ", ".join(unmatched[:20]) + (f" (+{len(unmatched) - 20} more)" if len(unmatched) > 20 else "")
        raise CheckpointError(f"{what}: {len(unmatched)} weights have no counterpart in this configuration: {shown}")
    return groups


def _apply(state: Mapping[str, Tensor], pairs: list[Pair], what: str, forward: bool) -> dict[str, Tensor]:
    source = 0 if forward else 1
    prefixes = {pair[source]: i for i, pair in enumerate(pairs)}
    out: dict[str, Tensor] = {}
    for index, sub in _group(state, prefixes, what).items():
        pair = pairs[index]
        converter = pair[2]
        converted = converter.to_diffusers(sub) if forward else converter.from_diffusers(sub)
        target = pair[1] if forward else pair[0]
        out.update({f"{target}.{k}": v for k, v in converted.items()})
    return out


def to_diffusers_state(state: Mapping[str, Tensor], pairs: list[Pair], what: str) -> dict[str, Tensor]:
    """ldmkit keys -> diffusers keys (tensors may share storage with ``state``)."""
    return _apply(state, pairs, what, forward=True)


def from_diffusers_state(state: Mapping[str, Tensor], pairs: list[Pair], what: str) -> dict[str, Tensor]:
    """diffusers keys -> ldmkit keys (tensors may share storage with ``state``)."""
    return _apply(state, pairs, what, forward=False)
