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
    from ldmkit.specs import PipelineSpec

log = logging.getLogger(__name__)

__all__ = ["from_diffusers", "to_diffusers"]

MODEL_INDEX = "model_index.json"
CONFIG = "config.json"
SCHEDULER_CONFIG = "scheduler_config.json"
TOKENIZER_JSON = "tokenizer.json"
EXPORT_RECORD = "ldmkit_export.json"
"""What ldmkit writes next to a diffusers folder: what was left out and why, and the rest of its spec."""
LEFT_OUT_WEIGHTS = "ldmkit_conditioner.safetensors"
"""The weights of a conditioner diffusers cannot represent, kept for ``convert --from diffusers``."""
README = "README.md"
FIRST_STAGE_FOLDERS = ("vae", "vqvae")
CONDITIONER_FOLDERS = ("text_encoder", "bert")
CONVERTED = {"unet", "scheduler", *CONDITIONER_FOLDERS, *FIRST_STAGE_FOLDERS}
# not part of the model: ldmkit tokenizes prompts itself and has no safety checker
IGNORED = {"tokenizer", "safety_checker", "feature_extractor"}
# "latent_diffusion": diffusers' pipeline module that defines LDMBertModel, a transformers model
WEIGHTS = {
    "diffusers": DIFFUSERS_WEIGHTS,
    "transformers": TRANSFORMERS_WEIGHTS,
    "latent_diffusion": TRANSFORMERS_WEIGHTS,
}
# the diffusers pipeline classes written, with the names they give the first stage and the conditioner
LAYOUTS: dict[str, tuple[str, str | None]] = {
    "StableDiffusionPipeline": ("vae", "text_encoder"),
    "LDMTextToImagePipeline": ("vqvae", "bert"),
    "LDMPipeline": ("vqvae", None),
}
PLAIN_PIPELINE = "LDMPipeline"
TEXT_PIPELINE = "StableDiffusionPipeline"
# entries a pipeline's constructor takes besides the models (Stable Diffusion: no safety checker)
EXTRA_ENTRIES: dict[str, dict[str, Any]] = {
    "StableDiffusionPipeline": {
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
}


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


def _tokenizer_json(directory: Path) -> dict[str, Any] | None:
    """The folder's ``tokenizer/tokenizer.json`` (a vocabulary may live there), None when absent or unreadable."""
    path = directory / "tokenizer" / TOKENIZER_JSON
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except SpecError as exc:  # a tokenizer only adds a vocabulary; the model converts without it
        log.info("%s: not read (%s)", path, exc)
        return None


def _read_record(directory: Path) -> dict[str, Any]:
    """``ldmkit_export.json`` when the folder has one (written by :func:`to_diffusers`), else empty."""
    path = directory / EXPORT_RECORD
    return read_json(path) if path.is_file() else {}


def _read_left_out(directory: Path, spec: PipelineSpec, registry: Registry) -> Any:
    """The conditioner kept next to the folders (``spec.conditioner``), holding ``ldmkit_conditioner.safetensors``."""
    from ldmkit.building import build_component
    from ldmkit.checkpoints import load_into

    comp = spec.conditioner
    assert comp is not None  # the caller checked
    module = build_component(registry, "conditioner", comp.type, comp.params_for(registry) or comp.params)
    load_into(module, read_weights(directory, LEFT_OUT_WEIGHTS), what=str(directory / LEFT_OUT_WEIGHTS))
    return module.eval()


def from_diffusers(directory: str | Path, registry: Registry | None = None) -> Pipeline:
    """Read a diffusers pipeline folder (safetensors weights only) as an ldmkit Pipeline.

    Converts ``unet/``, ``vae/`` or ``vqvae/``, ``text_encoder/`` or ``bert/`` (when present) and
    ``scheduler/``; each model folder goes to the registered component (of ``registry``, the process's by
    default) whose ``diffusers_classes`` include the class ``model_index.json`` names. A folder written by
    :func:`to_diffusers` also gives back what its ``ldmkit_export.json`` keeps: a conditioner diffusers
    cannot represent (with its weights), the sampling settings and the tasks. A component nothing reads,
    or a missing file, raises SpecError naming it.
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
    context = DiffusersContext(
        prediction=prediction,
        tokenizer=declared.get("tokenizer"),
        tokenizer_json=_tokenizer_json(directory) if "tokenizer" in declared else None,
    )
    record = _read_record(directory)
    unet = _read_model(directory, "unet", "denoiser", _entry(libraries, declared, "unet"), context, registry)
    stage_config = read_json(directory / stages[0] / CONFIG)
    scale_factor = scaling_factor_from_diffusers(stage_config)
    first_stage = _read_model(
        directory, stages[0], "first_stage", _entry(libraries, declared, stages[0]), context, registry
    )

    implied = unet.diffusers_conditioner() if callable(getattr(unet, "diffusers_conditioner", None)) else None
    conditioner = None
    texts = [name for name in CONDITIONER_FOLDERS if name in declared]
    if len(texts) > 1:
        raise SpecError(f"{directory / MODEL_INDEX}: more than one text encoder ({', '.join(texts)})")
    if texts:
        if implied is not None:
            raise SpecError(
                f"{directory}: a unet that needs the {implied[0]!r} conditioner next to a text encoder is not supported"
            )
        conditioner = _read_model(
            directory, texts[0], "conditioner", _entry(libraries, declared, texts[0]), context, registry
        )
    elif implied is not None:
        # e.g. class ids that go straight to the unet's label embedding: a conditioner without weights
        conditioner = registry.create("conditioner", implied[0], implied[1])
    kept = record.get("conditioner") if conditioner is None else None  # a conditioner diffusers cannot hold

    sample = read_json(directory / "unet" / CONFIG).get("sample_size")
    spec = validate_spec(
        {
            "first_stage": {"type": first_stage.name, "params": first_stage.params.model_dump(mode="json")},
            "denoiser": {"type": unet.name, "params": unet.params.model_dump(mode="json")},
            "conditioner": kept
            if conditioner is None
            else {"type": conditioner.name, "params": conditioner.params.model_dump(mode="json")},
            "schedule": schedule.model_dump(),
            "scale_factor": scale_factor,
            "latent_size": [sample, sample] if isinstance(sample, int) and not isinstance(sample, bool) else None,
            # what ldmkit recorded at export and diffusers has no place for (absent in other folders)
            **{k: record[k] for k in ("latent_size", "sampling", "tasks") if record.get(k) is not None},
        },
        registry,
        source=str(directory),
    )
    if conditioner is None and spec.conditioner is not None:
        conditioner = _read_left_out(directory, spec, registry)
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


def _left_out_reason(pipeline: Pipeline, conditioner: Any) -> str | None:
    """Why ``conditioner`` has no diffusers counterpart, or None when it writes (or needs) nothing else."""
    explain = getattr(conditioner, "diffusers_left_out", None)
    if callable(explain):
        return explain()
    if callable(getattr(conditioner, "to_diffusers", None)):
        return None
    reason = f"ldmkit's {conditioner.name!r} conditioner has no diffusers counterpart"
    extra = getattr(pipeline.denoiser.params, "in_channels", 0) - pipeline.first_stage.latent_channels
    if extra > 0:  # channels no diffusers text-to-image pipeline supplies
        reason += f"; the unet also reads {extra} conditioning channels concatenated to the latent"
    return reason


def _record(pipeline: Pipeline, layout: str, index: dict[str, Any], left_out: list[dict[str, str]]) -> dict[str, Any]:
    """``ldmkit_export.json``: what is in the folder, what is not and why, and the spec's settings diffusers lacks."""
    spec = pipeline.spec
    assert spec is not None  # to_diffusers checked
    record: dict[str, Any] = {
        "format": 1,
        "pipeline": layout,
        "components": {k: v[1] for k, v in index.items() if isinstance(v, list) and v[0] is not None},
        "left_out": left_out,
        "sampling": spec.sampling.model_dump(mode="json", exclude_none=True),
        "tasks": {k: v.model_dump(mode="json") for k, v in spec.tasks.items()},
    }
    if spec.latent_size is not None:
        record["latent_size"] = list(spec.latent_size)
    if left_out and spec.conditioner is not None:
        record["conditioner"] = spec.conditioner.model_dump(mode="json")
    return record


def _readme(record: dict[str, Any]) -> str:
    """A short note for people who open the folder: how to load it and what diffusers cannot run."""
    lines = [
        "# Exported by ldmkit",
        "",
        f"Load with `diffusers.DiffusionPipeline.from_pretrained(folder)` (a `{record['pipeline']}`).",
        "",
        "In this folder: " + ", ".join(f"`{k}` ({v})" for k, v in sorted(record["components"].items())) + ".",
    ]
    if record["left_out"]:
        lines += ["", "Left out (diffusers has no counterpart):", ""]
        lines += [f"- {item['component']} `{item['type']}`: {item['reason']}" for item in record["left_out"]]
        lines += [
            "",
            f"The left-out conditioner's spec is in `{EXPORT_RECORD}` and its weights in `{LEFT_OUT_WEIGHTS}`;",
            "`ldmkit convert --from diffusers` on this folder gives back the whole ldmkit pipeline. In diffusers the",
            "pipeline's `__call__` cannot condition the unet; its models work on their own: denoise with",
            "`unet(latents, t, encoder_hidden_states=context).sample` (concatenate any conditioning channels to",
            "`latents` first), where the context comes from the left-out conditioner, and decode with",
            "`vqvae.decode(latents / vqvae.config.scaling_factor).sample`.",
        ]
    return "\n".join(lines) + "\n"


def to_diffusers(pipeline: Pipeline, directory: str | Path, registry: Registry | None = None) -> Path:
    """Write ``pipeline`` as a diffusers folder that ``DiffusionPipeline.from_pretrained`` loads as it is.

    Each component writes its own folder through its ``to_diffusers`` (see :mod:`ldmkit.conversions`).
    The conditioner's model decides the pipeline class: CLIP text -> ``StableDiffusionPipeline``
    (``vae/``, ``text_encoder/``, ``tokenizer/``), the paper's text transformer -> ``LDMTextToImagePipeline``
    (``vqvae/``, ``bert/``, ``tokenizer/``); without one (unconditional, class ids in the UNet, or a
    conditioner diffusers has no counterpart for) the folder is an ``LDMPipeline`` (``vqvae/``, ``unet/``,
    ``scheduler/``). ``model_index.json`` names only what is written. A conditioner diffusers cannot
    represent is left out with a warning; ``ldmkit_export.json`` says what and why and keeps its spec, and
    its weights go to ``ldmkit_conditioner.safetensors``, so :func:`from_diffusers` restores it. Weights are
    safetensors.
    """
    from ldmkit.checkpoints import atomic_write_text, save_state_dict

    if pipeline.spec is None:
        raise SpecError("this pipeline has no spec, so its noise schedule cannot be described")
    prediction = pipeline.denoiser.prediction
    unet = component_to_diffusers(pipeline.denoiser, DiffusersContext(prediction=prediction))
    stage = component_to_diffusers(pipeline.first_stage, DiffusersContext(scale_factor=pipeline.scale_factor))
    if unet is None or stage is None:
        raise SpecError("the denoiser and the first stage must each write a diffusers model")
    text = None
    left_out: list[dict[str, str]] = []
    cond = pipeline.conditioner
    if cond is not None:
        reason = _left_out_reason(pipeline, cond)
        if reason is None:
            text = component_to_diffusers(cond, DiffusersContext(prediction=prediction, denoiser_config=unet.config))
        else:
            left_out.append({"component": "conditioner", "type": cond.name, "reason": reason})
    # a text encoder that names no pipeline goes where CLIP's does, as before the field existed
    layout = PLAIN_PIPELINE if text is None else text.pipeline or TEXT_PIPELINE
    if layout not in LAYOUTS:
        raise SpecError(f"diffusers pipeline {layout!r} is not one ldmkit writes ({', '.join(LAYOUTS)})")
    stage_name, text_name = LAYOUTS[layout]
    if text is not None and text_name is None:
        raise SpecError(f"diffusers' {layout} has no place for a text encoder")
    scheduler = scheduler_config_to_diffusers(pipeline.spec.schedule, prediction)

    directory = Path(directory)
    index: dict[str, Any] = {
        "_class_name": layout,
        "_diffusers_version": DIFFUSERS_VERSION,
        "unet": [unet.library, unet.class_name],
        stage_name: [stage.library, stage.class_name],
        "scheduler": ["diffusers", scheduler["_class_name"]],
        **EXTRA_ENTRIES.get(layout, {}),
    }
    _write_model(directory, "unet", unet)
    _write_model(directory, stage_name, stage)
    if text is not None and text_name is not None:
        _write_model(directory, text_name, text)
        index[text_name] = [text.library, text.class_name]
        for companion in text.companions:
            (directory / companion.folder).mkdir(parents=True, exist_ok=True)
            companion.write(directory / companion.folder)
            index[companion.folder] = [companion.library, companion.class_name]
    (directory / "scheduler").mkdir(parents=True, exist_ok=True)
    write_json(directory / "scheduler" / SCHEDULER_CONFIG, scheduler)
    if left_out and cond is not None:
        save_state_dict(cond.state_dict(), directory / LEFT_OUT_WEIGHTS)
        for item in left_out:
            log.warning("%s: %s %r left out: %s", directory, item["component"], item["type"], item["reason"])
    record = _record(pipeline, layout, index, left_out)
    write_json(directory / EXPORT_RECORD, record)
    atomic_write_text(directory / README, _readme(record))
    write_json(directory / MODEL_INDEX, index)  # last: a folder without it is visibly incomplete
    return directory
