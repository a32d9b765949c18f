"""Whole pipelines: a diffusers folder (``model_index.json`` + one folder per model) <-> an ldmkit Pipeline."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ldmkit.diffusers_interop._io import (
    DIFFUSERS_VERSION,
    DIFFUSERS_WEIGHTS,
    TRANSFORMERS_WEIGHTS,
    read_json,
    read_weights,
    write_json,
    write_weights,
)
from ldmkit.diffusers_interop.clip import clip_text_from_transformers, clip_text_to_transformers
from ldmkit.diffusers_interop.scheduler import schedule_from_diffusers, scheduler_config_to_diffusers
from ldmkit.diffusers_interop.unet import unet_from_diffusers, unet_to_diffusers
from ldmkit.diffusers_interop.vae import (
    autoencoder_from_diffusers,
    autoencoder_params_from_diffusers,
    autoencoder_to_diffusers,
)
from ldmkit.errors import SpecError
from ldmkit.pipeline import Pipeline

log = logging.getLogger(__name__)

MODEL_INDEX = "model_index.json"
CONFIG = "config.json"
SCHEDULER_CONFIG = "scheduler_config.json"
FIRST_STAGE_FOLDERS = ("vae", "vqvae")
CONVERTED = {"unet", "scheduler", "text_encoder", *FIRST_STAGE_FOLDERS}
# not part of the model: ldmkit tokenizes prompts itself and has no safety checker
IGNORED = {"tokenizer", "safety_checker", "feature_extractor"}
TEXT_ENCODER_CLASSES = ("CLIPTextModel",)


def _declared(index: dict[str, Any]) -> dict[str, str]:
    """Component name -> class name for every component model_index.json sets (null entries skipped)."""
    out = {}
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, (list, tuple)):
            continue
        if len(value) == 2 and value[1] is not None:
            out[name] = str(value[1])
    return out


def _text_encoder(directory: Path, declared: dict[str, str]) -> Any:
    folder = directory / "text_encoder"
    if declared["text_encoder"] not in TEXT_ENCODER_CLASSES:
        raise SpecError(f"{directory}: text_encoder {declared['text_encoder']!r} is not supported (CLIPTextModel)")
    tokenizer = declared.get("tokenizer")
    if tokenizer is not None and not tokenizer.startswith("CLIPTokenizer"):
        raise SpecError(f"{directory}: tokenizer {tokenizer!r} is not supported; clip-text uses CLIP's BPE tokenizer")
    return clip_text_from_transformers(read_json(folder / CONFIG), read_weights(folder, TRANSFORMERS_WEIGHTS))


def from_diffusers(directory: str | Path) -> Pipeline:
    """Read a diffusers pipeline folder (safetensors weights only) as an ldmkit Pipeline.

    Converts ``unet/`` (UNet2DConditionModel or UNet2DModel), ``vae/`` or ``vqvae/`` (AutoencoderKL or
    VQModel), ``text_encoder/`` (CLIPTextModel, when present) and ``scheduler/``. A component ldmkit
    cannot convert, or a missing file, raises SpecError naming it.
    """
    from ldmkit.registry import get_registry
    from ldmkit.schedules import NoiseSchedule
    from ldmkit.specs import validate_spec

    directory = Path(directory)
    if not directory.is_dir():
        raise SpecError(f"{directory}: not a folder")
    declared = _declared(read_json(directory / MODEL_INDEX))
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
    unet_config = read_json(directory / "unet" / CONFIG)
    unet = unet_from_diffusers(unet_config, read_weights(directory / "unet", DIFFUSERS_WEIGHTS), prediction)
    stage_folder = directory / stages[0]
    stage_config = read_json(stage_folder / CONFIG)
    _, _, scale_factor = autoencoder_params_from_diffusers(stage_config)
    first_stage = autoencoder_from_diffusers(stage_config, read_weights(stage_folder, DIFFUSERS_WEIGHTS))

    conditioner = None
    if "text_encoder" in declared:
        if unet.params.num_classes is not None:
            raise SpecError(f"{directory}: a unet with both a text encoder and class embeddings is not supported")
        conditioner = _text_encoder(directory, declared)
    elif unet.params.num_classes is not None:
        # class ids go straight to the unet's label embedding; the conditioner has no weights
        params = {"embed_dim": 4 * unet.params.model_channels, "n_classes": unet.params.num_classes, "target": "vector"}
        conditioner = get_registry().create("conditioner", "class-embedder", params)

    sample = unet_config.get("sample_size")
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


def _conditioner_kind(pipeline: Pipeline) -> str | None:
    """'clip' or None (no conditioner, or class ids fed to the unet); SpecError for anything else."""
    cond = pipeline.conditioner
    if cond is None:
        return None
    if cond.name == "clip-text":
        return "clip"
    if cond.name == "class-embedder" and cond.params.target == "vector":
        if pipeline.denoiser.params.num_classes != cond.params.n_classes:
            raise SpecError("class-embedder n_classes differs from the unet's num_classes")
        log.info("class-embedder: diffusers keeps no conditioner for class ids; null_class is not written")
        return None
    raise SpecError(
        f"conditioner {cond.name!r} has no diffusers counterpart (clip-text, or class-embedder with target "
        "'vector'); convert the models one by one with unet_to_diffusers / autoencoder_to_diffusers"
    )


def to_diffusers(pipeline: Pipeline, directory: str | Path) -> Path:
    """Write ``pipeline`` as a diffusers folder: model_index.json, unet/, vae/ or vqvae/, text_encoder/, scheduler/.

    A pipeline with a CLIP text encoder is written as a ``StableDiffusionPipeline`` (first stage in
    ``vae/``), one without as an ``LDMPipeline`` (first stage in ``vqvae/``). Weights are safetensors.
    """
    if pipeline.spec is None:
        raise SpecError("this pipeline has no spec, so its noise schedule cannot be described")
    kind = _conditioner_kind(pipeline)
    unet_config, unet_state = unet_to_diffusers(pipeline.denoiser)
    stage_config, stage_state = autoencoder_to_diffusers(pipeline.first_stage, pipeline.scale_factor)
    scheduler = scheduler_config_to_diffusers(pipeline.spec.schedule, pipeline.denoiser.prediction)
    text = clip_text_to_transformers(pipeline.conditioner) if kind == "clip" else None
    if pipeline.denoiser.params.num_classes is not None:
        log.warning("diffusers' LDMPipeline passes no class labels; load unet/ on its own to sample by class")

    directory = Path(directory)
    stage_name = "vae" if kind == "clip" else "vqvae"
    index: dict[str, Any] = {
        "_class_name": "StableDiffusionPipeline" if kind == "clip" else "LDMPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "unet": ["diffusers", unet_config["_class_name"]],
        stage_name: ["diffusers", stage_config["_class_name"]],
        "scheduler": ["diffusers", scheduler["_class_name"]],
    }
    for name, (config, state) in {"unet": (unet_config, unet_state), stage_name: (stage_config, stage_state)}.items():
        (directory / name).mkdir(parents=True, exist_ok=True)
        write_json(directory / name / CONFIG, config)
        write_weights(directory / name, DIFFUSERS_WEIGHTS, state)
    if text is not None:
        (directory / "text_encoder").mkdir(parents=True, exist_ok=True)
        write_json(directory / "text_encoder" / CONFIG, text[0])
        write_weights(directory / "text_encoder", TRANSFORMERS_WEIGHTS, text[1])
        index.update(
            text_encoder=["transformers", "CLIPTextModel"],
            safety_checker=[None, None],
            feature_extractor=[None, None],
            requires_safety_checker=False,
        )
        if _write_tokenizer(directory / "tokenizer", pipeline.conditioner.params.vocab_size):
            index["tokenizer"] = ["transformers", "CLIPTokenizer"]
    (directory / "scheduler").mkdir(parents=True, exist_ok=True)
    write_json(directory / "scheduler" / SCHEDULER_CONFIG, scheduler)
    write_json(directory / MODEL_INDEX, index)  # last: a folder without it is visibly incomplete
    return directory


def _write_tokenizer(folder: Path, vocab_size: int) -> bool:
    """Write CLIP's tokenizer files when the text encoder uses its vocabulary; False when it does not."""
    from ldmkit.diffusers_interop.tokenizer import CLIP_VOCAB_SIZE, write_clip_tokenizer

    if vocab_size != CLIP_VOCAB_SIZE:
        log.info("text encoder vocab_size %d is not CLIP's %d: no tokenizer/ written", vocab_size, CLIP_VOCAB_SIZE)
        return False
    write_clip_tokenizer(folder)
    return True
