"""The hooks a plugin implements. Each receives a ``register`` callback.

The component hooks take ``register(ComponentClass)``; :func:`register_commands` takes
``register(CommandClass)`` and :func:`register_models` takes ``register(name, folder, ...)``.
"""

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


@hookspec
def register_adapters(register: Register) -> None:
    """Register :class:`ldmkit.adapters.Adapter` subclasses (LoRA, textual inversion) with ``register(cls)``."""


@hookspec
def register_commands(register: Register) -> None:
    """Register CLI subcommands with ``register(CommandClass)``.

    ``CommandClass`` subclasses :class:`ldmkit.commands.Command`: a ``name`` (lowercase letters,
    digits and hyphens), a one-line ``help``, and the methods ``add_arguments(parser)`` and
    ``run(args) -> int``. The command shows in ``ldmkit --help`` and runs like a built-in one: an
    :class:`ldmkit.LdmkitError` it raises exits with code 2 and its message. A name that a built-in
    command or another plugin already uses is a collision: the plugin is reported and skipped.

    The hook runs whenever the CLI starts, ``ldmkit --help`` included: import the command's module
    here, and anything heavy (torch models, transformers) only inside ``run``.
    """


@hookspec
def register_models(register: Register) -> None:
    """Register named, ready-to-use pipelines with ``register(name, folder, *, description="", default=False)``.

    ``folder`` is a pipeline folder (``spec.yaml`` and weights, as :meth:`ldmkit.Pipeline.save`
    writes it), given as a path or as a callable without arguments that returns the path (called each
    time the model is opened, e.g. to unpack or fetch the weights). ``ldmkit generate --model NAME`` opens it, and
    :func:`ldmkit.generation.open_model` in Python. ``default=True`` makes it the default model,
    the one ``ldmkit generate`` opens without ``--spec`` or ``--model``; at most one plugin may
    claim that. Names follow the component rules (no dots, no spaces); ``default`` is reserved.
    A name another plugin already registered is a collision: the plugin is reported and skipped.
    """


HOOK_KINDS: dict[str, str] = {
    "register_first_stages": "first_stage",
    "register_denoisers": "denoiser",
    "register_conditioners": "conditioner",
    "register_samplers": "sampler",
    "register_tasks": "task",
    "register_datasets": "dataset",
    "register_adapters": "adapter",
}

EXTENSION_HOOKS: tuple[str, ...] = ("register_commands", "register_models")
"""Hooks that register something other than a pipeline component (CLI commands, named models)."""

ALL_HOOKS: tuple[str, ...] = (*HOOK_KINDS, *EXTENSION_HOOKS)
"""Every hook name, component hooks first."""

__all__ = [
    "ALL_HOOKS",
    "EXTENSION_HOOKS",
    "HOOK_KINDS",
    "PROJECT",
    "Register",
    "hookimpl",
    "hookspec",
    "register_adapters",
    "register_commands",
    "register_conditioners",
    "register_datasets",
    "register_denoisers",
    "register_first_stages",
    "register_models",
    "register_samplers",
    "register_tasks",
]
