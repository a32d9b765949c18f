"""Conformance checks for datasets (classes registered with ``register_datasets``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import pytest
import torch

from ldmkit.testing.base import ComponentConformance


def _same(a: Any, b: Any) -> bool:
    """Equal values, tensors compared exactly, nested dicts and lists element by element."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


__all__ = ["DatasetConformance"]


class DatasetConformance(ComponentConformance):
    """A map-style dataset: ``from_params``, ``len``, items that are dicts of named values, a pure function of the seed.

    Set ``params`` (example params), ``item_shapes`` (key -> the shape of that tensor in one item) and
    optionally ``value_ranges`` (key -> (low, high) its values lie in), ``length`` (the ``len`` the
    params give), ``seed_param`` (the param that seeds the items; None: the dataset is not seeded) and
    ``indices`` (the items checked).
    """

    kind = "dataset"
    item_shapes: ClassVar[dict[str, tuple[int, ...]]] = {}
    value_ranges: ClassVar[dict[str, tuple[float, float]]] = {}
    length: ClassVar[int | None] = None
    seed_param: ClassVar[str | None] = "seed"
    indices: ClassVar[tuple[int, ...]] = (0, 1, 2)

    def make_component(self) -> Any:
        """The dataset built from ``params`` (datasets are no modules: no weights, no eval mode)."""
        return self.cls().from_params(dict(self.params))

    def _items(self, dataset: Any) -> list[Any]:
        return [dataset[i] for i in self.indices]

    def test_registered(self) -> None:
        cls = self.cls()
        assert self.registry().get(self.kind, cls.name) is cls

    def test_length(self) -> None:
        dataset = self.make_component()
        size = len(dataset)
        assert isinstance(size, int) and size >= max(self.indices) + 1, f"len() is {size!r}"
        if self.length is not None:
            assert size == self.length, f"len() is {size}, expected {self.length}"
        with pytest.raises(IndexError):  # iteration (for item in dataset) stops at the end
            dataset[size]

    def test_items_have_the_declared_shapes(self) -> None:
        if not self.item_shapes:
            pytest.fail(f"{type(self).__name__} must set the class attribute 'item_shapes'")
        items = self._items(self.make_component())
        for i, item in zip(self.indices, items, strict=True):
            assert isinstance(item, Mapping), f"item {i} is a {type(item).__name__}, not a dict"
            assert item.keys() == items[0].keys(), f"item {i} has keys {sorted(item)}, item 0 {sorted(items[0])}"
            for key, shape in self.item_shapes.items():
                assert key in item, f"item {i} lacks {key!r}"
                value = item[key]
                assert isinstance(value, torch.Tensor), f"item {i}[{key!r}] is a {type(value).__name__}"
                assert tuple(value.shape) == tuple(shape), f"item {i}[{key!r}] is {tuple(value.shape)}, not {shape}"

    def test_values_in_range(self) -> None:
        for i, item in zip(self.indices, self._items(self.make_component()), strict=True):
            for key, (low, high) in self.value_ranges.items():
                value = torch.as_tensor(item[key]).double()
                assert bool(torch.isfinite(value).all()), f"item {i}[{key!r}] holds NaN or Inf"
                found = (float(value.min()), float(value.max()))
                assert low <= found[0] and found[1] <= high, f"item {i}[{key!r}] spans {found}, not in [{low}, {high}]"

    def test_items_differ(self) -> None:
        items = self._items(self.make_component())
        assert not all(_same(items[0], other) for other in items[1:]), "every item is the same"

    def test_deterministic(self) -> None:
        # two datasets built from the same params give the same items, in any order of access
        first = self._items(self.make_component())
        second = [self.make_component()[i] for i in reversed(self.indices)][::-1]
        for i, a, b in zip(self.indices, first, second, strict=True):
            assert _same(a, b), f"item {i} differs between two datasets built from the same params"

    def test_seed_changes_items(self) -> None:
        if self.seed_param is None:
            return
        base = dict(self.params)
        other = self.cls().from_params({**base, self.seed_param: int(base.get(self.seed_param, 0)) + 1})
        mine = self._items(self.make_component())
        assert not all(_same(a, other[i]) for i, a in zip(self.indices, mine, strict=True)), (
            f"changing {self.seed_param!r} leaves the items unchanged"
        )
