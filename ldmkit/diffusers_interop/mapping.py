"""Renaming state dicts between ldmkit's (CompVis) module paths and diffusers' module paths.

A model's correspondence is a list of :data:`Pair` ``(ldmkit prefix, diffusers prefix, converter)``:
each pair maps one submodule, and its converter translates the keys (and, where the layers differ
in kind, the tensor shapes) below that prefix. Every conversion should be a pure reshape or split, so a
round trip reproduces the weights bit for bit. Components use these helpers in their own
``state_dict_from_diffusers`` / ``to_diffusers`` (see :mod:`ldmkit.conversions`); a converter of one
layer kind (a fused attention, say) lives with the component and only needs the two methods of
:class:`Converter`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from torch import Tensor

from ldmkit.errors import CheckpointError

__all__ = ["IDENTITY", "ConvToLinear", "Converter", "Pair", "Rename", "from_diffusers_state", "to_diffusers_state"]


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
        """ldmkit keys -> diffusers keys."""
        return {self._rename(k, self.table): v for k, v in sub.items()}

    def from_diffusers(self, sub: dict[str, Tensor]) -> dict[str, Tensor]:
        """diffusers keys -> ldmkit keys."""
        return {self._rename(k, self.inverse): v for k, v in sub.items()}


IDENTITY = Rename()
"""The converter that keeps every key as it is."""


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


class Converter(Protocol):
    """Translates the keys (and tensor shapes) below one module prefix, both ways."""

    def to_diffusers(self, sub: dict[str, Tensor]) -> dict[str, Tensor]: ...

    def from_diffusers(self, sub: dict[str, Tensor]) -> dict[str, Tensor]: ...


Pair = tuple[str, str, Converter]
"""(ldmkit module prefix, diffusers module prefix, converter of the keys below them)."""


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
    prefixes = {(pair[0] if forward else pair[1]): i for i, pair in enumerate(pairs)}
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
