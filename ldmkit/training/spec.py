"""``TrainSpec``: a training run as data (YAML/JSON), validated strictly, one field per setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ldmkit.errors import SpecError
from ldmkit.specs import ComponentSpec, PipelineSpec, StrictModel, format_validation_error, read_document

TRAIN_SPEC_VERSION: Final = 1


class DatasetSpec(ComponentSpec):
    """A registered dataset (registry kind ``dataset``) and how its samples are served."""

    preload: int | None = Field(
        None, ge=1, description="render this many samples once into memory (uint8) and draw batches from them"
    )
    preload_device: Literal["auto", "cpu"] = Field(
        "auto",
        description="where the preloaded samples live: 'auto' keeps them on the training device (a GPU gathers "
        "and decodes a batch in microseconds), 'cpu' in host memory",
    )


class OptimizerSpec(StrictModel):
    """AdamW with a linear warm-up of the learning rate (``LambdaLinearScheduler`` of the original)."""

    lr: float = Field(1.0e-4, gt=0)
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.999], min_length=2, max_length=2)
    weight_decay: float = Field(0.01, ge=0)
    eps: float = Field(1.0e-8, gt=0)
    warmup_steps: int = Field(0, ge=0)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: list[float]) -> list[float]:
        if not all(0.0 <= b < 1.0 for b in value):
            raise ValueError("each beta must lie in [0, 1)")
        return value


class EMASpec(StrictModel):
    """Exponential moving average of the trained weights (``LitEma`` of the original)."""

    decay: float = Field(0.9999, gt=0, lt=1)
    start: int = Field(0, ge=0, description="steps before this one copy the weights instead of averaging")
    warmup: bool = Field(True, description="use min(decay, (1 + n) / (10 + n)) after n updates, as LitEma does")


class AutoencoderLossSpec(StrictModel):
    """Reconstruction + regularizer + patch-GAN losses of the first-stage training."""

    l1_weight: float = Field(1.0, ge=0, description="weight of |x - x_rec|")
    kl_weight: float = Field(1.0e-6, ge=0, description="KL autoencoders: weight of KL(q(z|x) || N(0, I))")
    codebook_weight: float = Field(1.0, ge=0, description="VQ autoencoders: weight of the codebook loss")
    logvar_init: float = Field(0.0, description="KL autoencoders: the (fixed) output log-variance")
    perceptual_weight: float = Field(1.0, ge=0)
    perceptual_weights: str | None = Field(
        None, description="safetensors of the perceptual feature net; no perceptual loss without it"
    )
    disc_start: int = Field(50_001, ge=0, description="the discriminator is switched on at this step")
    disc_weight: float = Field(0.5, ge=0)
    disc_factor: float = Field(1.0, ge=0)
    disc_num_layers: int = Field(3, ge=1, le=6)
    disc_ndf: int = Field(64, ge=1)
    disc_lr: float | None = Field(None, gt=0, description="discriminator learning rate (default: optimizer.lr)")
    adaptive_weight: bool = Field(True, description="balance the GAN term by the ratio of last-layer gradients")


class DistributedSpec(StrictModel):
    """How a run spreads over several processes (``torchrun`` or ``ldmkit train --nproc N``)."""

    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="DistributedDataParallel (replicated weights) or FSDP (sharded weights and optimizer)"
    )
    find_unused_parameters: bool = Field(
        False, description="DDP: allow trained weights that get no gradient in a step (slower)"
    )
    bucket_cap_mb: float = Field(
        25.0, gt=0, description="DDP: gradients are all-reduced in buckets of this size while the backward runs"
    )


class _TrainCommon(StrictModel):
    version: Literal[1] = TRAIN_SPEC_VERSION
    dataset: DatasetSpec
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    batch_size: int = Field(8, ge=1, description="the global batch: split evenly across distributed processes")
    max_steps: int = Field(1000, ge=1)
    grad_clip: float | None = Field(None, gt=0, description="clip the global gradient norm to this value")
    ema: EMASpec | None = None
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = Field(0, ge=0)
    checkpoint_every: int = Field(1000, ge=1)
    log: Literal["csv", "tensorboard"] = "csv"
    log_every: int = Field(10, ge=1)
    out_dir: str = "runs/train"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(0, ge=0)
    progress: bool = True
    distributed: DistributedSpec = Field(default_factory=DistributedSpec)
    nonfinite_skips: int = Field(
        0,
        ge=0,
        description="steps in a row whose loss or gradient is NaN/Inf that are skipped (no weight update) before "
        "the run stops with an error; 0 stops at the first",
    )


class AutoencoderTrainSpec(_TrainCommon):
    """First-stage training: reconstruct dataset images."""

    stage: Literal["autoencoder"]
    first_stage: ComponentSpec
    image_field: str = "image"
    loss: AutoencoderLossSpec = Field(default_factory=AutoencoderLossSpec)


class LDMTrainSpec(_TrainCommon):
    """Diffusion training in the latent space of a trained, frozen first stage."""

    stage: Literal["ldm"]
    pipeline: PipelineSpec
    first_stage_weights: str | None = Field(None, description="safetensors written by the autoencoder stage")
    init_from: str | None = Field(
        None, description="a pipeline folder whose denoiser (and conditioner) weights start this run (fine-tuning)"
    )
    init_skip: list[str] = Field(
        default_factory=list,
        description="weights init_from leaves at their fresh initialisation (e.g. a conditioner part whose "
        "design changed): state-dict key prefixes written 'denoiser.<prefix>' or 'conditioner.<prefix>'",
    )
    init_grow: list[str] = Field(
        default_factory=list,
        description="weights that are larger in this model than in init_from (a denoiser given new concat input "
        "channels): full state-dict keys written 'denoiser.<key>'; the saved values fill the leading part of each "
        "axis and the rest is zero, so the new inputs start with no effect",
    )
    image_field: str = "image"
    conditioning: dict[str, str | dict[str, str]] = Field(
        default_factory=dict,
        description="conditioner input (or composite part) -> dataset field; a part taking a mapping "
        "maps its own keys to fields",
    )
    scale_by_std: bool = False
    train_conditioner: bool = Field(True, description="train the conditioner's trainable weights too")

    @model_validator(mode="after")
    def _conditioning_needs_conditioner(self) -> LDMTrainSpec:
        if self.conditioning and self.pipeline.conditioner is None:
            raise ValueError("'conditioning' maps dataset fields, but the pipeline has no conditioner")
        if self.pipeline.conditioner is not None and not self.conditioning:
            raise ValueError("the pipeline has a conditioner: 'conditioning' must map its inputs to dataset fields")
        return self


class LoraSpec(StrictModel):
    """The LoRA a ``stage: lora`` run trains: low-rank updates of the denoiser's layers."""

    rank: int = Field(4, ge=1, le=1024, description="rank of each update (down: rank x in, up: out x rank)")
    alpha: float | None = Field(
        None, gt=0, description="the updates are scaled by alpha / rank, as kohya's files say (None: alpha = rank)"
    )
    layers: str | None = Field(
        None,
        min_length=1,
        description="regular expression of the denoiser's layer names to adapt (None: the attention and "
        "feed-forward layers of its transformers)",
    )


class LoraTrainSpec(_TrainCommon):
    """A LoRA for a trained pipeline: its weights frozen, only the low-rank updates of the denoiser learn."""

    stage: Literal["lora"]
    base: str = Field(
        min_length=1, description="the pipeline to specialise: a model a plugin provides (by name) or a pipeline folder"
    )
    lora: LoraSpec = Field(default_factory=LoraSpec)
    image_field: str = "image"
    conditioning: dict[str, str | dict[str, str]] = Field(
        default_factory=dict,
        description="conditioner input (or composite part) -> dataset field, as in an ldm run; parts left out "
        "are given their unconditional input",
    )
    reword: dict[str, str] = Field(
        default_factory=dict,
        description="words of the text fields replaced before conditioning (whole words; an empty replacement "
        "drops the word): how a run teaches a phrase a new meaning",
    )
    uncond_rate: float = Field(
        0.1, ge=0.0, lt=1.0, description="fraction of samples trained unconditionally (keeps guidance working)"
    )

    @field_validator("reword")
    @classmethod
    def _single_words(cls, value: dict[str, str]) -> dict[str, str]:
        for word in value:
            if not word or not all(part.isalnum() for part in word.split()) or len(word.split()) != 1:
                raise ValueError(f"{word!r} is not one word of letters and digits")
        return value


TrainSpec = AutoencoderTrainSpec | LDMTrainSpec | LoraTrainSpec
STAGES: dict[str, type[_TrainCommon]] = {
    "autoencoder": AutoencoderTrainSpec,
    "ldm": LDMTrainSpec,
    "lora": LoraTrainSpec,
}


def validate_train_spec(data: dict[str, Any] | TrainSpec, source: str = "train spec") -> TrainSpec:
    """Validate a mapping into the spec class of its ``stage``; SpecError names the offending field."""
    if isinstance(data, (AutoencoderTrainSpec, LDMTrainSpec, LoraTrainSpec)):
        return data
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a train spec must be a mapping, not a {type(data).__name__}")
    stage = data.get("stage")
    if stage not in STAGES:
        choices = ", ".join(repr(s) for s in STAGES)
        raise SpecError(f"{source}: stage: must be one of {choices}, got {stage!r}")
    try:
        spec = STAGES[stage].model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{source}: {format_validation_error(exc)}") from None
    if isinstance(spec, LDMTrainSpec):
        from ldmkit.specs import validate_spec

        try:
            validate_spec(spec.pipeline, source=f"{source}: pipeline")
        except SpecError as exc:
            raise type(exc)(_prefix_pipeline(str(exc))) from None
    return spec  # type: ignore[return-value]


def _prefix_pipeline(message: str) -> str:
    # validate_spec names fields relative to the pipeline; say that they sit under 'pipeline.'
    head, sep, tail = message.partition(": pipeline: ")
    if not sep:
        return message
    return f"{head}: " + "; ".join(f"pipeline.{part}" for part in tail.split("; "))


def load_train_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainSpec:
    """Read (safe YAML/JSON) and validate a train spec file; ``overrides`` maps dotted keys to values."""
    data = read_document(path)
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return validate_train_spec(data, source=str(path))


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(d, "optimizer.lr", 1e-4)`` sets ``d["optimizer"]["lr"]``, creating mappings on the way."""
    parts = key.split(".")
    if not all(parts):
        raise SpecError(f"override {key!r}: not a dotted field name")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(f"override {key!r}: {part!r} is not a mapping")
        node = child
    node[parts[-1]] = value
