"""Conformance checks for :class:`ldmkit.FirstStage` (autoencoders)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ldmkit.interfaces import FirstStage
from ldmkit.testing.base import ComponentConformance

__all__ = ["FirstStageConformance"]


class FirstStageConformance(ComponentConformance):
    """Shapes follow ``latent_channels`` and ``downsample``; encode is deterministic; float32 is kept.

    Set ``image_size`` to a multiple of the component's ``downsample``; override :meth:`make_images`
    for inputs other than uniform noise in [-1, 1].
    """

    kind = "first_stage"
    image_size: ClassVar[int] = 16
    image_channels: ClassVar[int] = 3
    batch_size: ClassVar[int] = 2
    atol: ClassVar[float] = 1e-5

    def make_images(self, batch: int) -> Tensor:
        g = torch.Generator().manual_seed(1234)
        size = (batch, self.image_channels, self.image_size, self.image_size)
        return torch.rand(size, generator=g) * 2 - 1  # (B, 3, H, W) in [-1, 1]

    def _built(self) -> Any:
        component = self.make_component()
        assert isinstance(component, FirstStage)
        assert isinstance(component.latent_channels, int) and component.latent_channels > 0
        assert isinstance(component.downsample, int) and component.downsample > 0
        assert self.image_size % component.downsample == 0, "choose image_size as a multiple of downsample"
        return component

    def _latent_shape(self, component: Any, batch: int) -> tuple[int, int, int, int]:
        h = self.image_size // component.downsample
        return (batch, component.latent_channels, h, h)

    @torch.no_grad()
    def test_encode_shape(self) -> None:
        component = self._built()
        latents = component.encode(self.make_images(self.batch_size))
        assert tuple(latents.shape) == self._latent_shape(component, self.batch_size)

    @torch.no_grad()
    def test_decode_shape(self) -> None:
        component = self._built()
        g = torch.Generator().manual_seed(0)
        latents = torch.randn(self._latent_shape(component, self.batch_size), generator=g)  # (B, C_lat, h, w)
        images = component.decode(latents)
        assert tuple(images.shape) == (self.batch_size, self.image_channels, self.image_size, self.image_size)

    @torch.no_grad()
    def test_float32_preserved(self) -> None:
        component = self._built()
        latents = component.encode(self.make_images(self.batch_size))
        assert latents.dtype == torch.float32
        assert component.decode(latents).dtype == torch.float32

    @torch.no_grad()
    def test_encode_deterministic(self) -> None:
        component = self._built()
        images = self.make_images(self.batch_size)
        torch.manual_seed(1)
        first = component.encode(images)
        torch.manual_seed(2)  # a different global RNG state must not matter
        assert torch.equal(first, component.encode(images))

    @torch.no_grad()
    def test_encode_distribution_seeded(self) -> None:
        component = self._built()
        images = self.make_images(self.batch_size)
        first = component.encode_distribution(images).sample(generator=torch.Generator().manual_seed(7))
        second = component.encode_distribution(images).sample(generator=torch.Generator().manual_seed(7))
        assert tuple(first.shape) == self._latent_shape(component, self.batch_size)
        assert torch.equal(first, second)

    @torch.no_grad()
    def test_encode_is_distribution_mode(self) -> None:
        component = self._built()
        images = self.make_images(self.batch_size)
        mode = component.encode_distribution(images).mode()
        torch.testing.assert_close(mode, component.encode(images), atol=self.atol, rtol=1e-4)
