"""ldmkit: latent diffusion models as a small typed core and plugins.

Submodules are reachable as attributes (``ldmkit.compvis.load(...)``): each is imported on first
access, so ``import ldmkit`` stays light (no diffusers, transformers, compiler or training code).
"""

import importlib as _importlib
import importlib.util as _importlib_util
import pkgutil as _pkgutil
from types import ModuleType as _ModuleType

from ldmkit.conditioning import Conditioning
from ldmkit.errors import (
    CheckpointError,
    InputError,
    LdmkitError,
    PluginError,
    SpecError,
    UnknownComponentError,
    UnsafeCheckpointError,
)
from ldmkit.hookspecs import hookimpl
from ldmkit.interfaces import (
    Component,
    Conditioner,
    Denoiser,
    FirstStage,
    Params,
    SampleOptions,
    Sampler,
    Task,
)
from ldmkit.pipeline import Pipeline
from ldmkit.registry import API_VERSION, get_registry
from ldmkit.schedules import NoiseSchedule, ScheduleSpec
from ldmkit.specs import PipelineSpec, load_spec

__version__ = "0.1.0"

__all__ = [
    "API_VERSION",
    "CheckpointError",
    "Component",
    "Conditioner",
    "Conditioning",
    "Denoiser",
    "FirstStage",
    "InputError",
    "LdmkitError",
    "NoiseSchedule",
    "Params",
    "Pipeline",
    "PipelineSpec",
    "PluginError",
    "SampleOptions",
    "Sampler",
    "ScheduleSpec",
    "SpecError",
    "Task",
    "UnknownComponentError",
    "UnsafeCheckpointError",
    "get_registry",
    "hookimpl",
    "load_spec",
]


def _submodule_names() -> list[str]:
    """Names of ldmkit's direct submodules and subpackages (found on disk, none imported)."""
    return sorted(info.name for info in _pkgutil.iter_modules(__path__) if not info.name.startswith("_"))


def __getattr__(name: str) -> _ModuleType:
    """Import the submodule ``ldmkit.<name>`` on first access (afterwards it is a plain attribute)."""
    if not name.startswith("_") and _importlib_util.find_spec(f"{__name__}.{name}") is not None:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The names ldmkit exports, its module attributes, and every submodule (imported or not)."""
    return sorted(set(globals()) | set(_submodule_names()))
