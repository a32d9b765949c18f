"""The hooks a plugin implements. Each receives a ``register`` callback: ``register(ComponentClass)``."""

from __future__ import annotations

from collections.abc import Callable

import pluggy

__all__ = ["Register", "hookimpl"]

PROJECT = "ldmkit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[..., None]


@hookspec
def register_first_stages(register: Register) -> None:
    """Register :class:`ldmkit.FirstStage` subclasses (autoencoders) with ``register(cls)``."""


@hookspec
def register_denoisers(register: Register) -> None:
    """Register :class:`ldmkit.Denoiser` subclasses (noise-prediction networks) with ``register(cls)``."""


@hookspec
def register_conditioners(register: Register) -> None:
    """Register :class:`ldmkit.Conditioner` subclasses (raw input -> Conditioning) with ``register(cls)``."""


@hookspec
def register_samplers(register: Register) -> None:
    """Register :class:`ldmkit.Sampler` subclasses (reverse processes) with ``register(cls)``."""


@hookspec
def register_tasks(register: Register) -> None:
    """Register :class:`ldmkit.Task` subclasses (user-facing jobs) with ``register(cls)``."""


@hookspec
def register_datasets(register: Register) -> None:
    """Register dataset classes (training data sources with ``name`` and ``Params``) with ``register(cls)``."""


HOOK_KINDS: dict[str, str] = {
    "register_first_stages": "first_stage",
    "register_denoisers": "denoiser",
    "register_conditioners": "conditioner",
    "register_samplers": "sampler",
    "register_tasks": "task",
    "register_datasets": "dataset",
}
