"""Conformance checks for :class:`ldmkit.Denoiser` (noise-prediction networks)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from ldmkit.conditioning import Conditioning
from ldmkit.interfaces import Denoiser
from ldmkit.testing.base import ComponentConformance

__all__ = ["DenoiserConformance"]


class DenoiserConformance(ComponentConformance):
    """Output shape, a valid ``prediction``, determinism and independence of the samples in a batch.

    ``x_channels`` is the channel count of ``x_t`` (concat conditioning comes in ``cond``);
    ``out_channels`` defaults to it. Override :meth:`make_cond` for conditioned denoisers; the
    returned Conditioning must have ``batch`` rows.
    """

    kind = "denoiser"
    x_channels: ClassVar[int] = 4
    out_channels: ClassVar[int | None] = None
    latent_size: ClassVar[int] = 8
    batch_size: ClassVar[int] = 3
    num_timesteps: ClassVar[int] = 1000
    atol: ClassVar[float] = 1e-4

    def make_x(self, batch: int) -> Tensor:
        g = torch.Generator().manual_seed(11)
        return torch.randn(batch, self.x_channels, self.latent_size, self.latent_size, generator=g)  # (B, C, h, w)

    def make_t(self, batch: int) -> Tensor:
        # distinct timesteps, so that mixing up samples of the batch shows
        return torch.linspace(1, self.num_timesteps - 1, batch).long()  # (B,)

    def make_cond(self, batch: int) -> Conditioning:
        return Conditioning()

    def _inputs(self, batch: int) -> tuple[Tensor, Tensor, Conditioning]:
        return self.make_x(batch), self.make_t(batch), self.make_cond(batch)

    def _built(self) -> Any:
        component = self.make_component()
        assert isinstance(component, Denoiser)
        return component

    @torch.no_grad()
    def test_forward_shape(self) -> None:
        component = self._built()
        x, t, cond = self._inputs(self.batch_size)
        out = component(x, t, cond)
        c_out = self.out_channels or self.x_channels
        assert tuple(out.shape) == (self.batch_size, c_out, self.latent_size, self.latent_size)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()

    def test_prediction_type(self) -> None:
        assert self._built().prediction in ("eps", "x0", "v")

    @torch.no_grad()
    def test_deterministic(self) -> None:
        component = self._built()
        x, t, cond = self._inputs(self.batch_size)
        torch.manual_seed(1)
        first = component(x, t, cond)
        torch.manual_seed(2)
        assert torch.equal(first, component(x, t, cond))

    @torch.no_grad()
    def test_batch_independence(self) -> None:
        component = self._built()
        x, t, cond = self._inputs(self.batch_size)
        full = component(x, t, cond)  # (B, C_out, h, w)
        for i in range(self.batch_size):
            single = component(x[i : i + 1], t[i : i + 1], cond[i : i + 1])  # (1, C_out, h, w)
            torch.testing.assert_close(single[0], full[i], atol=self.atol, rtol=1e-4)
        # changing the other samples leaves sample 0 alone
        changed = x.clone()
        changed[1:] = -changed[1:] * 3
        torch.testing.assert_close(component(changed, t, cond)[0], full[0], atol=self.atol, rtol=1e-4)

    @torch.no_grad()
    def test_forward_guided_equals_forward_on_both_halves(self) -> None:
        component = self._built()
        x, t, _ = self._inputs(self.batch_size)
        both = self.make_cond(2 * self.batch_size)  # [uncond; cond] rows for a guided call
        guided = component.forward_guided(x, t, both)  # (2B, C_out, h, w)
        plain = component(torch.cat([x, x]), torch.cat([t, t]), both)
        assert guided.shape == plain.shape
        torch.testing.assert_close(guided, plain, atol=self.atol, rtol=1e-4)
        if both.concat is not None:  # a concat that both halves share may come with B rows
            shared = both.concat[: self.batch_size]  # (B, C_c, h, w)
            guided = component.forward_guided(x, t, replace(both, concat=shared))
            plain = component(torch.cat([x, x]), torch.cat([t, t]), replace(both, concat=torch.cat([shared, shared])))
            torch.testing.assert_close(guided, plain, atol=self.atol, rtol=1e-4)
