"""Writing trained weights: safetensors state dicts and component specs (through the core's atomic writers)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml
from torch import Tensor, nn

from ldmkit.checkpoints import atomic_write_text, load_into, save_state_dict
from ldmkit.errors import CheckpointError, TrainingError
from ldmkit.specs import ComponentSpec


def save_weights(module: nn.Module, path: Path) -> None:
    """The module's state dict as safetensors, written atomically."""
    try:
        save_state_dict(module.state_dict(), path)
    except CheckpointError as exc:
        raise TrainingError(str(exc)) from None


def load_weights(module: nn.Module, source: Path | Mapping[str, Tensor], what: str, skip: tuple[str, ...] = ()) -> None:
    """Load a safetensors file (or a state dict) into ``module`` strictly, except keys under ``skip``.

    Skipped weights are left as they are. CheckpointError names what does not fit.
    """
    if not isinstance(source, Mapping):
        source = Path(source)
        if not source.is_file():
            raise CheckpointError(f"{what}: {source}: no such file")
    try:
        load_into(module, source, what=what, ignore_prefixes=skip)
    except CheckpointError as exc:
        message = str(exc)
        raise type(exc)(message if message.startswith(what) else f"{what}: {message}") from None


def write_component_spec(spec: ComponentSpec, path: Path) -> None:
    """``{type, params}`` as YAML, written atomically."""
    text = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    try:
        atomic_write_text(path, text)
    except CheckpointError as exc:
        raise TrainingError(str(exc)) from None
