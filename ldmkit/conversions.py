"""How a component class declares its own conversions from CompVis checkpoints and to/from diffusers.

The core's loaders (:mod:`ldmkit.compvis`, :mod:`ldmkit.diffusers_interop`) know no component: they read
files, split state dicts and ask the registry which registered class answers to what they found. A class
takes part by declaring the attributes below; every one of them is optional, and a class that declares
nothing is simply not convertible (the loaders then raise a SpecError naming it).

**CompVis** (an original ``*_config: {target: ..., params: {...}}`` entry)::

    class TinyUNet(ldmkit.Denoiser):
        name = "tiny-unet"
        compvis_targets: ClassVar[tuple[str, ...]] = ("my_package.models.TinyUNet",)

        @classmethod
        def params_from_compvis(cls, params: dict[str, Any], context: CompVisContext) -> dict[str, Any]:
            # the original ``params`` -> what this class's ``Params`` validates
            return {"channels": params["channels"], "prediction": context.parameterization}

        @classmethod
        def state_dict_from_compvis(cls, state: dict[str, Tensor], params: Params) -> dict[str, Tensor]:
            # optional: the original key names -> this module's (default: unchanged)
            return state

``compvis_targets`` lists the original class paths the component stands in for; the loader finds the
class whose targets include a config's ``target`` and never imports anything named in a YAML file.
``params_from_compvis`` gets the entry's ``params`` and a :class:`CompVisContext` with what the
LatentDiffusion params around it say (``conditioning_key``, ``image_size``, ``channels``,
``parameterization``). It raises SpecError for options it does not implement; a missing key (KeyError)
or a value of the wrong kind (TypeError, ValueError) is reported by the loader as a SpecError naming the
section. ``state_dict_from_compvis`` receives the component's part of the checkpoint with the
LatentDiffusion prefix (``model.diffusion_model.``, ``first_stage_model.``, ``cond_stage_model.``)
already removed.

**diffusers** (one model folder of a diffusers pipeline, ``unet/``, ``vae/``, ``text_encoder/`` ...)::

    class TinyUNet(ldmkit.Denoiser):
        diffusers_classes: ClassVar[tuple[str, ...]] = ("UNet2DModel",)

        @classmethod
        def params_from_diffusers(cls, config: Mapping[str, Any], context: DiffusersContext) -> Params: ...

        @classmethod
        def state_dict_from_diffusers(cls, state: Mapping[str, Tensor], params: Params) -> dict[str, Tensor]: ...

        def to_diffusers(self, context: DiffusersContext) -> DiffusersModel | None: ...

``diffusers_classes`` are the class names a ``model_index.json`` (or a transformers ``architectures``
entry) gives for the folders this class reads; a transformers model may add ``diffusers_model_types``
(its config's ``model_type``), for configs that name no architecture. ``params_from_diffusers`` translates the folder's
``config.json`` into validated ``Params``; ``state_dict_from_diffusers`` renames the folder's weights to
this module's keys; ``to_diffusers`` gives the folder to write (:class:`DiffusersModel`), or None for a
conditioner that has nothing of its own to write (its information lives in the denoiser, as class ids
do). A denoiser may also define ``diffusers_conditioner(self) -> (name, params) | None``: the registered
conditioner to build when a folder holds no text encoder (for instance the class-id embedder of a
class-conditional UNet). A conditioner's :class:`DiffusersModel` names the diffusers ``pipeline`` class
that runs it; a conditioner diffusers cannot represent may define ``diffusers_left_out(self) -> str | None``
(the reason, or None when it converts): the pipeline is then written without it, and says why.
:mod:`ldmkit.diffusers_interop.mapping` and :mod:`ldmkit.diffusers_interop.config` hold the generic
renaming and config-reading helpers these methods are written with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ldmkit.errors import SpecError

if TYPE_CHECKING:
    from torch import Tensor

    from ldmkit.registry import ComponentInfo, Registry

__all__ = [
    "CompVisContext",
    "DiffusersCompanion",
    "DiffusersContext",
    "DiffusersModel",
    "compvis_targets",
    "diffusers_classes",
    "find_compvis_component",
    "find_diffusers_component",
    "state_dict_from_compvis",
]


# -- CompVis -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompVisContext:
    """What the LatentDiffusion params around a component's config entry say, for ``params_from_compvis``."""

    section: str
    """The config entry being translated: ``unet_config``, ``first_stage_config`` or ``cond_stage_config``."""
    target: str
    """The entry's ``target`` string."""
    conditioning_key: str | None = None
    """``crossattn``, ``concat``, ``hybrid``, ``adm`` or None (unconditional)."""
    image_size: int | None = None
    """The latent side length of the diffusion model."""
    channels: int | None = None
    """The latent channel count of the diffusion model."""
    parameterization: str = "eps"
    """What the denoiser predicts: ``eps``, ``x0`` or ``v``."""
    model_params: Mapping[str, Any] = field(default_factory=dict)
    """The whole LatentDiffusion ``params`` mapping, for anything else a component needs (read only)."""


def compvis_targets(cls: type) -> tuple[str, ...]:
    """The CompVis ``target`` strings ``cls`` declares (empty when it declares none)."""
    targets = getattr(cls, "compvis_targets", ())
    if isinstance(targets, str):  # a single string would otherwise match character by character
        return (targets,)
    return tuple(t for t in targets if isinstance(t, str))


def find_compvis_component(registry: Registry, kind: str, target: str, section: str) -> ComponentInfo:
    """The registered component of ``kind`` that declares ``target``; SpecError listing the known targets.

    Nothing named by ``target`` is imported: the answer comes only from the classes in ``registry``.
    """
    known: dict[str, ComponentInfo] = {}
    for name in registry.names(kind):
        info = registry.info(kind, name)
        for declared in compvis_targets(info.cls):
            known.setdefault(declared, info)
    if target in known:
        info = known[target]
        if not callable(getattr(info.cls, "params_from_compvis", None)):
            raise SpecError(f"{section}: {kind} {info.name!r} declares {target!r} but no params_from_compvis")
        return info
    listing = ", ".join(sorted(known)) or "(none)"
    raise SpecError(
        f"{section}.target {target!r} is not supported (nothing is imported from configs); known: {listing}"
    )


def state_dict_from_compvis(cls: type, state: dict[str, Tensor], params: Any) -> dict[str, Tensor]:
    """``state`` renamed by ``cls.state_dict_from_compvis`` when the class declares it, else unchanged."""
    rename = getattr(cls, "state_dict_from_compvis", None)
    return dict(state) if rename is None else dict(rename(state, params))


# -- diffusers ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiffusersContext:
    """What a component's diffusers conversion may need from the rest of the pipeline."""

    prediction: str = "eps"
    """The denoiser's prediction (``eps``, ``x0``, ``v``), read from or written to the scheduler config."""
    scale_factor: float = 1.0
    """The latent scale factor (diffusers keeps it in the first stage's ``scaling_factor``)."""
    tokenizer: str | None = None
    """The tokenizer class a folder's ``model_index.json`` declares, when reading."""
    denoiser_config: Mapping[str, Any] | None = None
    """The exported denoiser's diffusers config, when a conditioner is exported next to it."""
    tokenizer_json: Mapping[str, Any] | None = None
    """The folder's parsed ``tokenizer/tokenizer.json``, when reading and the file exists (a vocabulary lives there)."""


@dataclass(frozen=True)
class DiffusersCompanion:
    """An extra folder written next to a model (a tokenizer, for instance)."""

    folder: str
    library: str
    class_name: str
    write: Callable[[Path], Any]
    """Writes the folder's files into the given (existing) folder."""


@dataclass(frozen=True)
class DiffusersModel:
    """One model folder of a diffusers pipeline: its library and class, ``config.json`` and weights."""

    library: str
    """``diffusers`` or ``transformers`` (decides the weights' file name and the model_index entry)."""
    class_name: str
    config: dict[str, Any]
    state: dict[str, Tensor]
    companions: tuple[DiffusersCompanion, ...] = ()
    pipeline: str | None = None
    """For a conditioner: the diffusers pipeline class that runs it (it decides the folders' names)."""


def diffusers_classes(cls: type) -> tuple[str, ...]:
    """The diffusers (or transformers) class names ``cls`` declares it reads (empty when none)."""
    names = getattr(cls, "diffusers_classes", ())
    if isinstance(names, str):
        return (names,)
    return tuple(n for n in names if isinstance(n, str))


def find_diffusers_component(registry: Registry, kind: str, class_name: Any, what: str) -> ComponentInfo:
    """The registered component of ``kind`` that reads ``class_name``; SpecError listing the classes known.

    A config that names no class (``class_name`` None) goes to the only component of ``kind`` that reads any.
    """
    known: dict[str, ComponentInfo] = {}
    for name in registry.names(kind):
        info = registry.info(kind, name)
        for declared in diffusers_classes(info.cls):
            known.setdefault(declared, info)
    if isinstance(class_name, str) and class_name in known:
        return known[class_name]
    if class_name is None and len({id(info) for info in known.values()}) == 1:
        return next(iter(known.values()))  # a config that names no class: the only component that reads this kind
    listing = ", ".join(sorted(known)) or "(none)"
    raise SpecError(f"{what}: {class_name!r} is not supported (readable: {listing})")
