"""The value that flows from a Conditioner to a Denoiser."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

import torch
from torch import Tensor

__all__ = ["SLOTS", "Conditioning"]

SLOTS: tuple[Literal["crossattn", "concat", "vector"], ...] = ("crossattn", "concat", "vector")


@dataclass(frozen=True)
class Conditioning:
    """Conditioning for the denoiser; any slot may be empty.

    crossattn: (B, L, D) context for cross-attention.
    concat:    (B, C, h, w) channels concatenated to the latent.
    vector:    (B,) class ids or (B, D) vector (``y`` / ``adm`` in CompVis).
    """

    crossattn: Tensor | None = None
    concat: Tensor | None = None
    vector: Tensor | None = None

    @property
    def batch_size(self) -> int | None:
        for name in SLOTS:
            value = getattr(self, name)
            if value is not None:
                return int(value.shape[0])
        return None

    def filled(self) -> tuple[str, ...]:
        """Names of the slots that hold a tensor."""
        return tuple(name for name in SLOTS if getattr(self, name) is not None)

    def map(self, fn) -> Conditioning:
        """Apply ``fn`` to every present tensor."""
        return replace(self, **{f.name: fn(v) for f in fields(self) if (v := getattr(self, f.name)) is not None})

    def to(self, *args, **kwargs) -> Conditioning:
        return self.map(lambda t: t.to(*args, **kwargs))

    def repeat(self, n: int) -> Conditioning:
        """Repeat a batch-1 (or batch-B) conditioning ``n`` times along the batch axis."""
        return self.map(lambda t: t.repeat_interleave(n, dim=0))

    def __getitem__(self, index) -> Conditioning:
        return self.map(lambda t: t[index])

    def merge(self, other: Conditioning) -> Conditioning:
        """Combine two conditionings; a slot filled in both is concatenated along its feature axis."""
        out = {}
        for name in SLOTS:
            a, b = getattr(self, name), getattr(other, name)
            if a is None or b is None:
                out[name] = a if b is None else b
            elif name == "crossattn":
                out[name] = torch.cat([a, b], dim=1)  # (B, La + Lb, D)
            elif name == "concat":
                out[name] = torch.cat([a, b], dim=1)  # (B, Ca + Cb, h, w)
            else:
                raise ValueError("two conditioners both fill the 'vector' slot")
        return Conditioning(**out)

    @staticmethod
    def cat(items: list[Conditioning]) -> Conditioning:
        """Concatenate conditionings along the batch axis (they must fill the same slots)."""
        first = items[0].filled()
        for item in items[1:]:
            if item.filled() != first:
                raise ValueError(f"cannot batch conditionings with slots {first} and {item.filled()}")
        return Conditioning(**{name: torch.cat([getattr(i, name) for i in items]) for name in first})


def guided_pair(uncond: Conditioning, cond: Conditioning) -> Conditioning:
    """``[uncond; cond]`` (2B rows) for one guided denoiser call.

    A ``concat`` that both halves hold alike (a text prompt's empty map, say) is kept once, with B
    rows: :meth:`ldmkit.Denoiser.forward_guided` accepts that, and the UNet can then share more
    work between the halves. The comparison reads the values once per call of this function.
    """
    both = Conditioning.cat([uncond, cond])
    u, c = uncond.concat, cond.concat
    if u is not None and c is not None and u.shape == c.shape and u.device == c.device and torch.equal(u, c):
        return replace(both, concat=c)
    return both
