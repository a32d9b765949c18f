"""Typed exceptions. Every error a user can cause derives from :class:`LdmkitError`."""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CheckpointFormatError",
    "InputError",
    "LdmkitError",
    "NumericsError",
    "PluginError",
    "SpecError",
    "TrainingError",
    "UnknownComponentError",
    "UnsafeCheckpointError",
]


class LdmkitError(Exception):
    """Base class of every error ldmkit raises on bad input."""


class SpecError(LdmkitError, ValueError):
    """A pipeline spec (or a part of it) is invalid. The message names the field."""


class UnknownComponentError(SpecError, KeyError):
    """A component ``type`` that no plugin registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class PluginError(LdmkitError):
    """A plugin failed to load, registered something invalid, or collided with another."""


class CheckpointError(LdmkitError):
    """A checkpoint file is missing, malformed or does not fit the model."""


class CheckpointFormatError(CheckpointError):
    """The file is not a checkpoint format ldmkit reads (decided by magic bytes)."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle checkpoint references a global that is not on the allowlist; nothing was run."""


class InputError(LdmkitError, ValueError):
    """A request's input (label, box, map, image, mask, prompt) is invalid."""


class TrainingError(LdmkitError):
    """A training run cannot start, resume or save."""


class NumericsError(LdmkitError, ArithmeticError):
    """A computation produced NaN or Inf (e.g. a half-precision decode that overflowed)."""
