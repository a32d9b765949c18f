"""LoRA training: a trained pipeline specialised by low-rank updates of its denoiser, its own weights frozen.

The pipeline (``base``: a model a plugin provides, or a pipeline folder) is loaded and frozen; a new
LoRA from the registered ``lora`` adapter (its ``new`` class method: updates that change nothing yet)
is applied to the denoiser's layers, and only its down and up matrices learn, with the latent diffusion
loss of ``stage: ldm``. Each sample is conditioned on its mapped dataset fields (the parts of a composite
conditioner left out get their unconditional input), except a fraction ``uncond_rate`` trained
unconditionally, so guidance keeps working. ``reword`` replaces words of the text fields first: the
same pictures under another wording teach that wording a meaning. The result is ``lora.safetensors`` in
kohya's layout, which ``Pipeline.load_lora``, a spec's ``adapters`` and ``ldmkit generate --lora`` read.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from ldmkit.conditioning import SLOTS, Conditioning
from ldmkit.errors import CheckpointError, InputError, SpecError, TrainingError
from ldmkit.pipeline import SPEC_FILE, Pipeline
from ldmkit.training import distributed
from ldmkit.training.ldm import LDMStage, _composite_parts
from ldmkit.training.optim import build_optimizer, load_scheduler_state, scheduler_state
from ldmkit.training.spec import LoraTrainSpec
from ldmkit.training.stage import Stage

__all__ = ["LORA_FILE", "LoraStage", "TrainableLora", "reword_texts"]

log = logging.getLogger(__name__)

LORA_FILE = "lora.safetensors"
"""The file a LoRA run exports, in ``out_dir``."""


class TrainableLora(Protocol):
    """What the LoRA stage asks of the registered ``lora`` adapter's ``new(...)`` result."""

    def parameters(self) -> list[Tensor]:
        """The trainable tensors (each layer's down and up)."""
        ...

    def save(self, path: str | Path) -> Path:
        """Write the LoRA in kohya's layout."""
        ...


def reword_texts(texts: list[str], words: dict[str, str]) -> list[str]:
    """``texts`` with each whole word of ``words`` replaced (case ignored; an empty replacement drops it)."""
    if not words:
        return list(texts)
    table = {word.lower(): text for word, text in words.items()}
    pattern = re.compile(r"\b(" + "|".join(re.escape(word) for word in table) + r")\b", re.IGNORECASE)
    out = []
    for text in texts:
        replaced = pattern.sub(lambda m: table[m.group(0).lower()], text)
        out.append(" ".join(replaced.split()))  # a dropped word leaves no double space
    return out


def open_base(base: str, registry: Any) -> Pipeline:
    """The pipeline to specialise: a pipeline folder, else a model a plugin registers under ``base``."""
    path = Path(base)
    if path.is_dir():
        if not (path / SPEC_FILE).is_file():
            raise SpecError(f"base: {path} holds no {SPEC_FILE}; give a pipeline folder or a model's name")
        return Pipeline.load(path, registry)
    if path.suffix or "/" in base or "\\" in base:
        raise SpecError(f"base: {base}: no such pipeline folder")
    from ldmkit.generation import model_dir

    return Pipeline.load(model_dir(base, registry=registry), registry)


def _mix(uncond: Conditioning, cond: Conditioning, drop: Tensor) -> Conditioning:
    """Per sample: ``uncond`` where ``drop`` (B,) else ``cond``."""
    out: dict[str, Tensor | None] = {}
    for slot in SLOTS:
        a, b = getattr(uncond, slot), getattr(cond, slot)
        if a is None or b is None or a.shape != b.shape:
            if a is not None or b is not None:
                raise SpecError(f"the conditioner's unconditional and conditional {slot} differ in shape")
            out[slot] = None
            continue
        mask = drop.to(b.device).view(-1, *([1] * (b.ndim - 1)))  # (B, 1, ...)
        out[slot] = torch.where(mask, a, b)
    return Conditioning(**out)


class LoraStage(LDMStage):
    """Trains a LoRA of a frozen pipeline's denoiser (the step and the inputs are the ldm stage's)."""

    spec: LoraTrainSpec  # type: ignore[assignment]

    def __init__(self, spec: LoraTrainSpec, device: torch.device, registry: Any = None) -> None:
        Stage.__init__(self, spec, device)
        if registry is None:
            from ldmkit.registry import get_registry

            registry = get_registry()
        self.pipe = open_base(spec.base, registry)
        self.pipe.to(device)
        for module in self.pipe.modules().values():
            module.requires_grad_(False)
            module.eval()  # the frozen base computes as it does when sampling
        self.denoiser = self.pipe.denoiser
        self.conditioner = self.pipe.conditioner
        if spec.conditioning and self.conditioner is None:
            raise SpecError("conditioning maps dataset fields, but the base pipeline has no conditioner")
        lora_cls = registry.get("adapter", "lora")
        new = getattr(lora_cls, "new", None)
        if not callable(new):
            raise TrainingError("the registered 'lora' adapter cannot make a new LoRA to train (it has no new())")
        layers = {"unet": spec.lora.layers} if spec.lora.layers is not None else None
        gen = self.step_generator(-1, "lora-init", torch.device("cpu"))
        try:
            self.lora: TrainableLora = new(
                self.pipe, rank=spec.lora.rank, alpha=spec.lora.alpha, layers=layers, generator=gen
            )
        except InputError as exc:
            raise SpecError(f"lora: {exc}") from None
        self.params = list(self.lora.parameters())
        self.opt, self.sched = build_optimizer(self.params, spec.optimizer)
        self.scale_factor = self.pipe.scale_factor
        self.latent_size = list(self.pipe.latent_size) if self.pipe.latent_size else None
        self._parts = _composite_parts(self.conditioner)
        self._check_conditioning()
        self._trained = {}
        self.world = distributed.SINGLE
        self.run = distributed.direct
        count = sum(p.numel() for p in self.params)
        log.info(
            "LoRA of rank %d on the denoiser: %d trained values; the base weights are frozen", spec.lora.rank, count
        )

    def distribute(self, world: distributed.World) -> None:
        if world.enabled:
            raise TrainingError("LoRA runs train in one process; drop --nproc / torchrun")

    def on_start(self, batch: dict[str, Any]) -> None:
        return None  # the base's scale_factor stays

    def model_spec(self) -> dict[str, Any]:
        return {"base": self.spec.base, "lora": self.spec.lora.model_dump(mode="json")}

    def raw_condition(self, batch: dict[str, Any]) -> Any:
        """The conditioner's raw input, text fields reworded (``reword``)."""
        if self.spec.reword:
            batch = {
                key: reword_texts(value, self.spec.reword) if _texts(value) else value for key, value in batch.items()
            }
        return super().raw_condition(batch)

    def _condition(self, batch: dict[str, Any], step: int) -> Conditioning:
        assert self.conditioner is not None
        cond = self.conditioner(self.raw_condition(batch))
        batch_size = cond.batch_size
        assert batch_size is not None
        if self.spec.uncond_rate <= 0:
            return cond
        gen = self.step_generator(step, "dropout", torch.device("cpu"))
        drop = torch.rand(batch_size, generator=gen) < self.spec.uncond_rate  # (B,)
        if not bool(drop.any()):
            return cond
        return _mix(self.conditioner.unconditional(batch_size), cond, drop)

    def _denoise(self, x_t: Tensor, t: Tensor, batch: dict[str, Any], step: int) -> Tensor:
        if self.conditioner is None:
            return self.denoiser(x_t, t, Conditioning())
        return self.denoiser(x_t, t, self._condition(batch, step))

    def state_dict(self) -> dict[str, Any]:
        return {
            "lora": [p.detach().cpu().clone() for p in self.params],
            "optimizer": self.opt.state_dict(),
            "scheduler": scheduler_state(self.sched),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["lora"]
        if len(saved) != len(self.params) or any(a.shape != b.shape for a, b in zip(saved, self.params, strict=True)):
            raise TrainingError("resume: the checkpoint's LoRA has other layers or ranks than this spec's")
        with torch.no_grad():
            for param, value in zip(self.params, saved, strict=True):
                param.copy_(value)
        self.opt.load_state_dict(state["optimizer"])
        load_scheduler_state(self.sched, state["scheduler"])

    def export(self, out_dir: Path) -> Path:
        """``out_dir/lora.safetensors`` in kohya's layout."""
        try:
            return self.lora.save(out_dir / LORA_FILE)
        except (OSError, CheckpointError) as exc:
            raise TrainingError(f"cannot write the LoRA to {out_dir / LORA_FILE} ({exc})") from None


def _texts(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)
