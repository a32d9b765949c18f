"""Training batches that depend only on (seed, step): a resumed run sees exactly the same data.

Batch ``k`` holds positions ``k*B .. k*B+B-1`` of an endless stream made of per-epoch permutations of the
dataset, each permutation seeded by (seed, epoch). Samples are rendered by the dataset (its ``batch(indices)``
when it has one), optionally in DataLoader worker processes, or drawn from a preloaded in-memory copy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import ValidationError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ldmkit.errors import InputError, SpecError, TrainingError
from ldmkit.specs import format_validation_error
from ldmkit.training.seeding import derive_seed, generator
from ldmkit.training.spec import DatasetSpec

log = logging.getLogger(__name__)

MAX_PERMUTED = 1 << 24  # larger datasets draw indices with replacement instead of permuting
PRELOAD_CHUNK = 256


def build_dataset(spec: DatasetSpec, registry=None) -> Any:
    """The registered dataset named by ``spec.type``, built from ``spec.params``."""
    from ldmkit.registry import get_registry

    registry = registry or get_registry()
    cls = registry.get("dataset", spec.type)
    try:
        if hasattr(cls, "from_params"):
            dataset = cls.from_params(spec.params)
        else:
            dataset = cls(cls.Params.model_validate(spec.params))
    except ValidationError as exc:
        raise SpecError(f"dataset: {format_validation_error(exc, 'params')}") from None
    except SpecError as exc:
        message = str(exc)
        raise SpecError(message if message.startswith("dataset") else f"dataset {spec.type!r}: {message}") from None
    try:
        size = len(dataset)
    except TypeError:
        raise SpecError(f"dataset {spec.type!r} has no length; training needs an indexed dataset") from None
    if size < 1:
        raise SpecError(f"dataset {spec.type!r} is empty")
    return dataset


class IndexStream:
    """Which dataset indices batch ``k`` uses, from (seed, k) only.

    With ``world_size`` > 1, rank ``r`` gets the ``r``-th of ``world_size`` equal slices of the global batch.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        if batch_size % world_size:
            raise SpecError(f"batch_size {batch_size} does not split evenly over {world_size} processes")
        local = batch_size // world_size
        self.shard = slice(rank * local, (rank + 1) * local)
        self._epoch: int | None = None
        self._perm: Tensor | None = None

    def _permutation(self, epoch: int) -> Tensor:
        if self._epoch != epoch:
            gen = generator(derive_seed(self.seed, "epoch", epoch))
            self._perm = torch.randperm(self.size, generator=gen)  # (N,)
            self._epoch = epoch
        assert self._perm is not None
        return self._perm

    def indices(self, step: int) -> list[int]:
        """This rank's indices of batch ``step`` (all of them in a single process)."""
        if self.size > MAX_PERMUTED:
            gen = generator(derive_seed(self.seed, "batch", step))
            return torch.randint(0, self.size, (self.batch_size,), generator=gen).tolist()[self.shard]
        first = step * self.batch_size
        positions = torch.arange(first + self.shard.start, first + self.shard.stop)  # (b,)
        epochs, offsets = positions // self.size, positions % self.size
        out = torch.empty_like(positions)
        for epoch in epochs.unique().tolist():  # one or two epochs per batch
            where = epochs == epoch
            out[where] = self._permutation(epoch)[offsets[where]]
        return out.tolist()


def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack tensors (and numbers) field by field; anything else (captions, layouts) stays a list."""
    out: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        first = values[0]
        if isinstance(first, Tensor) and all(isinstance(v, Tensor) and v.shape == first.shape for v in values):
            out[key] = torch.stack(values)
        elif isinstance(first, bool) or not isinstance(first, (int, float)):
            out[key] = values
        else:
            out[key] = torch.tensor(values, dtype=torch.long if isinstance(first, int) else torch.float32)
    return out


def fetch(dataset: Any, indices: Sequence[int]) -> dict[str, Any]:
    """A collated batch: the dataset's own ``batch(indices)`` when it has one (faster), else item by item."""
    if hasattr(dataset, "batch"):
        return dataset.batch(list(indices))
    samples = [dataset[i] for i in indices]
    if not samples or not isinstance(samples[0], Mapping):
        raise InputError("a training dataset must return a mapping of fields per sample")
    return collate(samples)


class _StepBatches(Dataset):
    """Item ``k`` is the whole batch of step ``start + k`` (rendered in a worker when workers are used)."""

    def __init__(self, dataset: Any, stream: IndexStream, start: int, stop: int) -> None:
        self.dataset, self.stream, self.start, self.stop = dataset, stream, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, k: int) -> dict[str, Any]:
        return fetch(self.dataset, self.stream.indices(self.start + k))


# -- preloading --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Encoding:
    """How one tensor field is stored in memory: ``image`` maps [-1, 1] to uint8, ``exact`` keeps uint8 values."""

    kind: str  # "image" | "exact" | "raw"
    dtype: torch.dtype

    def encode(self, name: str, value: Tensor) -> Tensor:
        if self.kind == "image":
            return ((value.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        if self.kind == "exact":
            small = value.to(torch.uint8)
            if not torch.equal(small.to(value.dtype), value):
                raise TrainingError(f"preload: field {name!r} holds values that do not fit the uint8 store")
            return small
        return value

    def decode(self, value: Tensor) -> Tensor:
        if self.kind == "image":
            return value.to(self.dtype) / 127.5 - 1.0
        if self.kind == "exact":
            return value.to(self.dtype)
        return value


def _choose_encoding(value: Tensor) -> _Encoding:
    if value.numel() and bool((value >= 0).all() and (value <= 255).all()) and torch.equal(value.round(), value):
        return _Encoding("exact", value.dtype)  # class ids, segmentation maps, binary masks
    if value.is_floating_point() and value.numel() and bool((value >= -1).all() and (value <= 1).all()):
        return _Encoding("image", value.dtype)
    return _Encoding("raw", value.dtype)


class _Chunks(Dataset):
    def __init__(self, dataset: Any, chunks: list[list[int]], encodings: dict[str, _Encoding]) -> None:
        self.dataset, self.chunks, self.encodings = dataset, chunks, encodings

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int) -> dict[str, Any]:
        batch = fetch(self.dataset, self.chunks[k])
        return {key: self.encodings[key].encode(key, v) if key in self.encodings else v for key, v in batch.items()}


class Preloaded:
    """Samples ``0 .. n-1`` rendered once (in ``num_workers`` processes) and kept in memory, images as uint8.

    With ``device`` the tensor fields live there: on a GPU, gathering and decoding a batch costs the host
    nothing, which is what keeps a small model's training from waiting on the CPU.
    """

    def __init__(self, dataset: Any, n: int, num_workers: int = 0, device: torch.device | None = None) -> None:
        n = min(n, len(dataset))
        chunks = [list(range(i, min(i + PRELOAD_CHUNK, n))) for i in range(0, n, PRELOAD_CHUNK)]
        first = fetch(dataset, chunks[0])
        self.encodings = {k: _choose_encoding(v) for k, v in first.items() if isinstance(v, Tensor)}
        parts: list[dict[str, Any]] = [_Chunks(dataset, chunks[:1], self.encodings)[0]]
        if len(chunks) > 1:
            loader = DataLoader(
                _Chunks(dataset, chunks[1:], self.encodings),
                batch_size=None,
                num_workers=num_workers,
                persistent_workers=False,
            )
            parts.extend(loader)
        self.store: dict[str, Any] = {}
        for key, value in parts[0].items():
            if isinstance(value, Tensor):
                self.store[key] = torch.cat([p[key] for p in parts])
            else:
                self.store[key] = [item for p in parts for item in p[key]]
        self.size = n
        self.device = device or torch.device("cpu")
        if self.device.type != "cpu":
            try:
                self.store = _moved(self.store, self.device)
            except torch.OutOfMemoryError:
                raise TrainingError(
                    f"preload: {n} samples do not fit in the memory of {self.device}; "
                    "set dataset.preload_device: cpu or preload fewer samples"
                ) from None
        nbytes = sum(v.numel() * v.element_size() for v in self.store.values() if isinstance(v, Tensor))
        log.info(
            "preloaded %d samples on %s, %.1f MB (%s)",
            n,
            self.device,
            nbytes / 1e6,
            ", ".join(f"{k}: {e.kind}" for k, e in self.encodings.items()),
        )

    def __len__(self) -> int:
        return self.size

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)  # (B,)
        if self.device.type == "cuda":  # a copy from pinned memory does not wait for the GPU to finish
            idx = idx.pin_memory().to(self.device, non_blocking=True)
        out: dict[str, Any] = {}
        for key, value in self.store.items():
            if isinstance(value, Tensor):
                out[key] = self.encodings[key].decode(value[idx])
            else:
                out[key] = [value[i] for i in indices]
        return out


def _moved(store: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The store with its tensor fields on ``device``."""
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in store.items()}


def batches(
    dataset: Any,
    batch_size: int,
    seed: int,
    start: int,
    stop: int,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[dict[str, Any]]:
    """The batches of steps ``start .. stop-1`` in order, each a pure function of (seed, step).

    ``batch_size`` is the global batch; each of ``world_size`` ranks gets its own slice of it.
    """
    stream = IndexStream(len(dataset), batch_size, seed, rank, world_size)
    if num_workers == 0 or isinstance(dataset, Preloaded):
        for step in range(start, stop):
            yield fetch(dataset, stream.indices(step))
        return
    loader = DataLoader(
        _StepBatches(dataset, stream, start, stop), batch_size=None, shuffle=False, num_workers=num_workers
    )
    yield from loader
