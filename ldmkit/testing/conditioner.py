"""Conformance checks for :class:`ldmkit.Conditioner` (raw input -> Conditioning)."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch

from ldmkit.conditioning import SLOTS, Conditioning
from ldmkit.interfaces import Conditioner, FirstStage
from ldmkit.testing.base import ComponentConformance

__all__ = ["ConditionerConformance"]


class ConditionerConformance(ComponentConformance):
    """``forward`` fills exactly the declared ``slots``; ``unconditional`` matches it for guidance.

    Subclasses must implement :meth:`make_raw`; conditioners that encode images with the first
    stage override :meth:`make_first_stage`.
    """

    kind = "conditioner"
    batch_size: ClassVar[int] = 2

    def make_raw(self, batch: int) -> Any:
        """A raw input of ``batch`` items in the conditioner's natural type."""
        pytest.fail(f"{type(self).__name__} must implement make_raw(batch)")

    def make_first_stage(self) -> FirstStage | None:
        """The first stage passed to ``attach`` (None: not attached)."""
        return None

    def _built(self) -> Any:
        component = self.make_component()
        assert isinstance(component, Conditioner)
        first_stage = self.make_first_stage()
        if first_stage is not None:
            component.attach(first_stage)
        return component

    def test_slots_declared(self) -> None:
        slots = self.cls().slots
        assert slots, "a conditioner declares the slots it fills"
        assert set(slots) <= set(SLOTS), f"unknown slots {set(slots) - set(SLOTS)}"

    @torch.no_grad()
    def test_forward_fills_declared_slots(self) -> None:
        component = self._built()
        cond = component(self.make_raw(self.batch_size))
        assert isinstance(cond, Conditioning)
        assert set(cond.filled()) == set(component.slots)

    @torch.no_grad()
    def test_batch_size_preserved(self) -> None:
        component = self._built()
        for batch in (1, self.batch_size):
            cond = component(self.make_raw(batch))
            for slot in cond.filled():
                assert getattr(cond, slot).shape[0] == batch, f"{slot} has the wrong batch size"

    @torch.no_grad()
    def test_deterministic(self) -> None:
        component = self._built()
        raw = self.make_raw(self.batch_size)
        first, second = component(raw), component(raw)
        for slot in first.filled():
            assert torch.equal(getattr(first, slot), getattr(second, slot)), slot

    @torch.no_grad()
    def test_unconditional_matches(self) -> None:
        component = self._built()
        cond = component(self.make_raw(self.batch_size))
        uncond = component.unconditional(self.batch_size)
        assert isinstance(uncond, Conditioning)
        assert set(uncond.filled()) == set(cond.filled())
        for slot in cond.filled():
            c, u = getattr(cond, slot), getattr(uncond, slot)
            assert u.shape[0] == self.batch_size, f"unconditional {slot} has the wrong batch size"
            assert u.shape[1:] == c.shape[1:], f"unconditional {slot} is {tuple(u.shape)}, conditional {tuple(c.shape)}"
            assert u.dtype == c.dtype, f"unconditional {slot} is {u.dtype}, conditional {c.dtype}"
        # the pipeline batches both for classifier-free guidance
        both = Conditioning.cat([uncond, cond])
        assert both.batch_size == 2 * self.batch_size
