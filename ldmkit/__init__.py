"""ldmkit: latent diffusion models as a small typed core and plugins."""

from __future__ import annotations

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
