"""Training of both stages of a latent diffusion model: the autoencoder, then diffusion in its latents.

    from ldmkit.training import train
    result = train("examples/train/tiny-autoencoder.yaml")

Runs are described by a :class:`TrainSpec` (YAML/JSON), checkpoint atomically to ``out_dir/last.ckpt``,
resume exactly, and export ``first_stage.safetensors`` (autoencoder), a pipeline folder (ldm) or a
kohya-layout ``lora.safetensors`` (lora: a trained pipeline specialised by a LoRA, its weights frozen).
"""

from __future__ import annotations

from ldmkit.training.loop import TrainResult, train
from ldmkit.training.spec import (
    AutoencoderTrainSpec,
    LDMTrainSpec,
    LoraTrainSpec,
    TrainSpec,
    load_train_spec,
    validate_train_spec,
)

__all__ = [
    "AutoencoderTrainSpec",
    "LDMTrainSpec",
    "LoraTrainSpec",
    "TrainResult",
    "TrainSpec",
    "load_train_spec",
    "train",
    "validate_train_spec",
]
