"""What the training loop asks of a stage (autoencoder or latent diffusion)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ldmkit.training.ema import EMA

if TYPE_CHECKING:
    from ldmkit.training.distributed import World
from ldmkit.training.seeding import derive_seed, generator


class Stage(ABC):
    """Owns the models, optimizers and EMA of one kind of training; the loop owns data, logs and checkpoints."""

    terms: list[str] = ["loss"]
    """Names of the values :meth:`train_step` returns (the log columns)."""

    def __init__(self, spec: Any, device: torch.device) -> None:
        self.spec = spec
        self.device = device
        self.ema: EMA | None = None
        self.nonfinite_step = False
        """Set by :meth:`train_step`: the last step's loss or gradient was NaN/Inf and its update was skipped."""

    def step_generator(self, step: int, purpose: str = "noise", device: torch.device | None = None) -> torch.Generator:
        """A generator seeded by (seed, step, purpose): a resumed run draws the same numbers."""
        return generator(derive_seed(self.spec.seed, purpose, step), device or self.device)

    def on_start(self, batch: dict[str, Any]) -> None:
        """Called with the first batch of a fresh (not resumed) run."""
        return None

    @abstractmethod
    def distribute(self, world: World) -> None:
        """Train as one of ``world.size`` processes (called once, after any resumed state is loaded)."""

    @abstractmethod
    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, Tensor]:
        """One optimization step on ``batch``; returns detached scalar tensors named by :attr:`terms`."""

    @abstractmethod
    def lr(self) -> float:
        """The current learning rate of the main optimizer."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (weights, optimizer and scheduler states, EMA, measured values).

        Called on every rank (sharded weights are gathered); rank 0's full, unwrapped state is saved.
        """

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    @abstractmethod
    def export(self, out_dir: Path) -> Path:
        """Write the trained result (EMA weights where kept) and return its path.

        Called on every rank (sharded weights are gathered); rank 0 writes.
        """

    def model_spec(self) -> dict[str, Any]:
        """The part of the spec that fixes the model's structure (a resumed run must not change it)."""
        return {}


def create_component(registry: Any, kind: str, comp: Any, field: str) -> Any:
    """Build a registered component from a ComponentSpec; bad params raise SpecError naming ``field.params``."""
    from pydantic import ValidationError

    from ldmkit.errors import SpecError
    from ldmkit.spec_checks import check_size
    from ldmkit.specs import format_validation_error

    try:
        check_size(kind, comp.type, comp.params, field, registry)  # refused before anything is allocated
        return registry.create(kind, comp.type, comp.params)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, f"{field}.params")) from None
    except SpecError as exc:
        raise type(exc)(f"{field}: {exc}") from None


def image_batch(batch: dict[str, Any], field: str) -> Tensor:
    """The images (B, C, H, W) of dataset field ``field`` as float32; SpecError if the field is missing or wrong."""
    from ldmkit.errors import SpecError

    if field not in batch:
        raise SpecError(f"image_field: the dataset has no field {field!r} (fields: {', '.join(batch)})")
    images = batch[field]
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise SpecError(f"image_field: dataset field {field!r} is not a batch of images (B, C, H, W)")
    return images.float()
