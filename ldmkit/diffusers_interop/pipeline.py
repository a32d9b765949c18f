"""Whole pipelines: a diffusers folder (``model_index.json`` + one folder per model) <-> an ldmkit Pipeline."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ldmkit.conversions import DiffusersContext, DiffusersModel, find_diffusers_component
from ldmkit.diffusers_interop._io import (
    DIFFUSERS_WEIGHTS,
    TRANSFORMERS_WEIGHTS,
    read_json,
    read_weights,
    write_json,
    write_weights,
)
from ldmkit.diffusers_interop.config import DIFFUSERS_VERSION
from ldmkit.diffusers_interop.models import (
    component_from_diffusers,
    component_to_diffusers,
    scaling_factor_from_diffusers,
)
from ldmkit.diffusers_interop.scheduler import schedule_from_diffusers, scheduler_config_to_diffusers
from ldmkit.errors import SpecError
from ldmkit.pipeline import Pipeline

if TYPE_CHECKING:
    from ldmkit.registry import Registry

log = logging.getLogger(__name__)

__all__ = ["from_diffusers", "to_diffusers"]

MODEL_INDEX = "model_index.json"
CONFIG = "config.json"
SCHEDULER_CONFIG = "scheduler_config.json"
FIRST_STAGE_FOLDERS = ("vae", "vqvae")
CONVERTED = {"unet", "scheduler", "text_encoder", *FIRST_STAGE_FOLDERS}
# not part of the model: ldmkit tokenizes prompts itself and has no safety checker
IGNORED = {"tokenizer", "safety_checker", "feature_extractor"}
WEIGHTS = {"diffusers": DIFFUSERS_WEIGHTS, "transformers": TRANSFORMERS_WEIGHTS}


def _declared(index: dict[str, Any]) -> dict[str, str]:
    """Component name -> class name for every component model_index.json sets (null entries skipped)."""
    out = {}
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, (list, tuple)):
            continue
        if len(value) == 2 and value[1] is not None:
            out[name] = str(value[1])
    return out


def _libraries(index: dict[str, Any]) -> dict[str, str]:
    """Component name -> the library model_index.json names for it (``diffusers``, ``transformers``)."""
    return {k: str(v[0]) for k, v in index.items() if isinstance(v, (list, tuple)) and len(v) == 2 and v[0]}


def _entry(libraries: dict[str, str], declared: dict[str, str], name: str) -> tuple[str, str]:
    return libraries.get(name, "diffusers"), declared[name]


def _read_model(
    directory: Path, folder: str, kind: str, declared: tuple[str, str], context: DiffusersContext, registry: Registry
) -> Any:
    """The component of ``kind`` that reads ``folder`` (declared as ``(library, class)``), with its weights."""
    library, class_name = declared
    find_diffusers_component(registry, kind, class_name, f"{directory}: {folder}")  # before any file is read
    config = read_json(directory / folder / CONFIG)
    state = read_weights(directory / folder, WEIGHTS.get(library, DIFFUSERS_WEIGHTS))
    return component_from_diffusers(kind, config, state, context, class_name=class_name, registry=registry)


def from_diffusers(directory: str | Path, registry: Registry | None = None) -> Pipeline:
    """Read a diffusers pipeline folder (safetensors weights only) as an ldmkit Pipeline.

    Converts ``unet/``, ``vae/`` or ``vqvae/``, ``text_encoder/`` (when present) and ``scheduler/``; each
    model folder goes to the registered component (of ``registry``, the process's by default) whose
    ``diffusers_classes`` include the class ``model_index.json`` names. A component nothing reads, or a
    missing file, raises SpecError naming it.
    """
    from ldmkit.registry import get_registry
    from ldmkit.schedules import NoiseSchedule
    from ldmkit.specs import validate_spec

    registry = registry or get_registry()
    directory = Path(directory)
    if not directory.is_dir():
        raise SpecError(f"{directory}: not a folder")
    index = read_json(directory / MODEL_INDEX)
    declared = _declared(index)
    libraries = _libraries(index)
    unknown = sorted(set(declared) - CONVERTED - IGNORED)
    if unknown:
        shown = ", ".join(f"{name} ({declared[name]})" for name in unknown)
        raise SpecError(f"{directory / MODEL_INDEX}: components ldmkit cannot convert: {shown}")
    stages = [name for name in FIRST_STAGE_FOLDERS if name in declared]
    missing = [name for name in ("unet", "scheduler") if name not in declared]
    if len(stages) != 1:
        missing.append("vae (or vqvae), exactly one")
    if missing:
        raise SpecError(f"{directory / MODEL_INDEX}: missing components: {', '.join(missing)}")
    for name in ("safety_checker", "feature_extractor"):
        if name in declared:
            log.info("%s: %s is not part of the model and is not converted", directory, name)

    schedule, prediction = schedule_from_diffusers(read_json(directory / "scheduler" / SCHEDULER_CONFIG))
    context = DiffusersContext(prediction=prediction, tokenizer=declared.get("tokenizer"))
    unet = _read_model(directory, "unet", "denoiser", _entry(libraries, declared, "unet"), context, registry)
    stage_config = read_json(directory / stages[0] / CONFIG)
    scale_factor = scaling_factor_from_diffusers(stage_config)
    first_stage = _read_model(
        directory, stages[0], "first_stage", _entry(libraries, declared, stages[0]), context, registry
    )

    implied = unet.diffusers_conditioner() if callable(getattr(unet, "diffusers_conditioner", None)) else None
    conditioner = None
    if "text_encoder" in declared:
        if implied is not None:
            raise SpecError(
                f"{directory}: a unet that needs the {implied[0]!r} conditioner next to a text encoder is not supported"
            )
        conditioner = _read_model(
            directory, "text_encoder", "conditioner", _entry(libraries, declared, "text_encoder"), context, registry
        )
    elif implied is not None:
        # e.g. class ids that go straight to the unet's label embedding: a conditioner without weights
        conditioner = registry.create("conditioner", implied[0], implied[1])

    sample = read_json(directory / "unet" / CONFIG).get("sample_size")
    spec = validate_spec(
        {
            "first_stage": {"type": first_stage.name, "params": first_stage.params.model_dump(mode="json")},
            "denoiser": {"type": unet.name, "params": unet.params.model_dump(mode="json")},
            "conditioner": None
            if conditioner is None
            else {"type": conditioner.name, "params": conditioner.params.model_dump(mode="json")},
            "schedule": schedule.model_dump(),
            "scale_factor": scale_factor,
            "latent_size": [sample, sample] if isinstance(sample, int) and not isinstance(sample, bool) else None,
        },
        registry,
        source=str(directory),
    )
    return Pipeline(
        first_stage=first_stage,
        denoiser=unet,
        conditioner=conditioner,
        schedule=NoiseSchedule.from_spec(spec.schedule),
        scale_factor=scale_factor,
        spec=spec,
    )


def _write_model(directory: Path, folder: str, model: DiffusersModel) -> None:
    (directory / folder).mkdir(parents=True, exist_ok=True)
    write_json(directory / folder / CONFIG, model.config)
    write_weights(directory / folder, WEIGHTS.get(model.library, DIFFUSERS_WEIGHTS), model.state)


def _exporters(registry: Registry | None) -> str:
    """The registered conditioners that declare a diffusers export, for error messages."""
    from ldmkit.registry import get_registry

    registry = registry or get_registry()
    names = [
        n
        for n in registry.names("conditioner")
        if callable(getattr(registry.info("conditioner", n).cls, "to_diffusers", None))
    ]
    return ", ".join(names) or "none"


def to_diffusers(pipeline: Pipeline, directory: str | Path, registry: Registry | None = None) -> Path:
    """Write ``pipeline`` as a diffusers folder: model_index.json, unet/, vae/ or vqvae/, text_encoder/, scheduler/.

    Each component writes its own folder through its ``to_diffusers`` (see :mod:`ldmkit.conversions`). A
    pipeline whose conditioner writes a text encoder is written as a ``StableDiffusionPipeline`` (first
    stage in ``vae/``), one without as an ``LDMPipeline`` (first stage in ``vqvae/``). Weights are
    safetensors.
    """
    if pipeline.spec is None:
        raise SpecError("this pipeline has no spec, so its noise schedule cannot be described")
    prediction = pipeline.denoiser.prediction
    unet = component_to_diffusers(pipeline.denoiser, DiffusersContext(prediction=prediction))
    stage = component_to_diffusers(pipeline.first_stage, DiffusersContext(scale_factor=pipeline.scale_factor))
    if unet is None or stage is None:
        raise SpecError("the denoiser and the first stage must each write a diffusers model")
    text = None
    if pipeline.conditioner is not None:
        cond = pipeline.conditioner
        if not callable(getattr(cond, "to_diffusers", None)):
            raise SpecError(
                f"conditioner {cond.name!r} has no diffusers counterpart (those that have: {_exporters(registry)}); "
                "convert the models one by one with denoiser_to_diffusers / first_stage_to_diffusers"
            )
        text = component_to_diffusers(cond, DiffusersContext(prediction=prediction, denoiser_config=unet.config))
    scheduler = scheduler_config_to_diffusers(pipeline.spec.schedule, prediction)

    directory = Path(directory)
    stage_name = "vae" if text is not None else "vqvae"
    index: dict[str, Any] = {
        "_class_name": "StableDiffusionPipeline" if text is not None else "LDMPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "unet": [unet.library, unet.class_name],
        stage_name: [stage.library, stage.class_name],
        "scheduler": ["diffusers", scheduler["_class_name"]],
    }
    _write_model(directory, "unet", unet)
    _write_model(directory, stage_name, stage)
    if text is not None:
        _write_model(directory, "text_encoder", text)
        index.update(
            text_encoder=[text.library, text.class_name],
            safety_checker=[None, None],
            feature_extractor=[None, None],
            requires_safety_checker=False,
        )
        for companion in text.companions:
            (directory / companion.folder).mkdir(parents=True, exist_ok=True)
            companion.write(directory / companion.folder)
            index[companion.folder] = [companion.library, companion.class_name]
    (directory / "scheduler").mkdir(parents=True, exist_ok=True)
    write_json(directory / "scheduler" / SCHEDULER_CONFIG, scheduler)
    write_json(directory / MODEL_INDEX, index)  # last: a folder without it is visibly incomplete
    return directory
