"""Latent diffusion training: the denoiser (and a trainable conditioner) learn in a frozen first stage's latents.

Per step, as the reference ``LatentDiffusion.p_losses`` with the "l2" simple loss: ``z = sample(q(z|x)) *
scale_factor``, ``t ~ U{0, T-1}``, ``noise ~ N(0, I)``, ``x_t = sqrt(a_t) z + sqrt(1 - a_t) noise``; the loss is
the mean squared error between the denoiser's output and its target (noise, x0 or v). Conditioning dropout for
classifier-free guidance comes from the conditioner's ``forward_train`` where it has one (``composite``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldmkit.errors import CheckpointError, SpecError, TrainingError
from ldmkit.interfaces import Denoiser
from ldmkit.nested import map_tensors
from ldmkit.pipeline import Pipeline
from ldmkit.prediction import target_for
from ldmkit.specs import validate_spec
from ldmkit.training import distributed, fsdp
from ldmkit.training.ema import EMA
from ldmkit.training.export import load_weights
from ldmkit.training.grow import grown
from ldmkit.training.optim import autocast, build_optimizer, load_scheduler_state, scheduler_state, step_optimizer
from ldmkit.training.spec import LDMTrainSpec
from ldmkit.training.stage import Stage, image_batch

log = logging.getLogger(__name__)

PIPELINE_DIR = "pipeline"


class LDMStage(Stage):
    """Trains the denoiser of a pipeline spec (and its conditioner's trainable weights)."""

    spec: LDMTrainSpec
    terms = ["loss"]

    def __init__(self, spec: LDMTrainSpec, device: torch.device, registry=None) -> None:
        super().__init__(spec, device)
        self.pipe = Pipeline.from_spec(validate_spec(spec.pipeline, registry, source="pipeline"), registry)
        first_stage = self.pipe.first_stage
        if spec.first_stage_weights is not None:
            load_weights(first_stage, Path(spec.first_stage_weights), "first_stage_weights")
        elif any(True for _ in first_stage.parameters()):
            log.warning("no first_stage_weights given: training on the latents of an untrained first stage")
        if spec.init_from is not None:
            self._init_from(Path(spec.init_from))
        first_stage.requires_grad_(False)
        frozen = {id(p) for p in first_stage.parameters()}
        self.pipe.to(device)
        self.denoiser: Denoiser = self.pipe.denoiser
        self.conditioner = self.pipe.conditioner
        self.denoiser.train()
        trained: dict[str, nn.Module] = {"denoiser": self.denoiser}
        if self.conditioner is not None:
            if spec.train_conditioner:
                self.conditioner.train()
                trained["conditioner"] = self.conditioner
            else:
                self.conditioner.requires_grad_(False)
        first_stage.eval()  # also when a conditioner holds it as a submodule
        self.params = [p for m in trained.values() for p in m.parameters() if p.requires_grad and id(p) not in frozen]
        if not self.params:
            raise TrainingError("the pipeline has no trainable weights")
        self.opt, self.sched = build_optimizer(self.params, spec.optimizer)
        if spec.ema is not None:
            self.ema = EMA(trained, spec.ema.decay, spec.ema.start, spec.ema.warmup)
        self.scale_factor = float(spec.pipeline.scale_factor)
        self.pipe.scale_factor = self.scale_factor
        self.latent_size: list[int] | None = None
        self._parts = _composite_parts(self.conditioner)
        self._check_conditioning()
        self._trained = trained
        self.world = distributed.SINGLE
        self.run: distributed.Runner = distributed.direct

    def distribute(self, world: distributed.World) -> None:
        """Train as one of ``world.size`` processes: gradients of the trained modules are averaged.

        Under FSDP the trained modules, the optimizer and the EMA are cut to this rank's shards.
        """
        self.world = world
        if fsdp.sharded(world):
            done = fsdp.shard(world, self._trained, self.device, self.params, self.opt, self.sched, self.ema)
            self.run, self.params, self.opt, self.sched = done.run, done.params, done.opt, done.sched
            return
        self.run = distributed.wrap(world, self._trained, self.device)

    def _init_from(self, directory: Path) -> None:
        """Start from the denoiser and conditioner weights of a saved pipeline folder."""
        if not directory.is_dir():
            raise TrainingError(f"init_from: {directory} is not a pipeline folder")
        skip = _init_skip(self.spec.init_skip, {"denoiser": self.pipe.denoiser, "conditioner": self.pipe.conditioner})
        path = directory / "denoiser.safetensors"
        source = grown(self.spec.init_grow, self.pipe.denoiser, path) if self.spec.init_grow else path
        load_weights(self.pipe.denoiser, source, "init_from denoiser", skip["denoiser"])
        if self.pipe.conditioner is not None and (directory / "conditioner.safetensors").is_file():
            path = directory / "conditioner.safetensors"
            load_weights(self.pipe.conditioner, path, "init_from conditioner", skip["conditioner"])
        if self.spec.init_skip:
            log.info("init_from %s; left fresh: %s", directory, ", ".join(self.spec.init_skip))

    def model_spec(self) -> dict[str, Any]:
        keep = {"first_stage", "denoiser", "conditioner", "schedule"}  # what fixes the weights' meaning
        return {"pipeline": self.spec.pipeline.model_dump(mode="json", include=keep)}

    def _check_conditioning(self) -> None:
        if self._parts is None:
            return
        unknown = [k for k in self.spec.conditioning if k not in self._parts]
        if unknown:
            raise SpecError(
                f"conditioning.{unknown[0]}: the composite conditioner has no part {unknown[0]!r} "
                f"(parts: {', '.join(self._parts)})"
            )

    # -- inputs --------------------------------------------------------------------------------------
    def _field(self, batch: dict[str, Any], field: str, key: str) -> Any:
        if field not in batch:
            raise SpecError(f"conditioning.{key}: the dataset has no field {field!r} (fields: {', '.join(batch)})")
        value = batch[field]
        return value.to(self.device) if isinstance(value, Tensor) else value

    def _resolve(self, batch: dict[str, Any], key: str, source: str | dict[str, str]) -> Any:
        if isinstance(source, str):
            return self._field(batch, source, key)
        return {k: self._field(batch, f, f"{key}.{k}") for k, f in source.items()}

    def raw_condition(self, batch: dict[str, Any]) -> Any:
        """The conditioner's raw input built from dataset fields as ``conditioning`` maps them."""
        mapping = self.spec.conditioning
        if self._parts is not None:
            return {p: self._resolve(batch, p, mapping[p]) if p in mapping else None for p in self._parts}
        if len(mapping) == 1:
            ((key, source),) = mapping.items()
            return self._resolve(batch, key, source)
        return {key: self._resolve(batch, key, source) for key, source in mapping.items()}

    def _latents(self, images: Tensor, step: int) -> Tensor:
        gen = self.step_generator(step, "posterior")
        with torch.no_grad(), autocast(self.device, self.spec.precision):
            posterior = self.pipe.first_stage.encode_distribution(images)
            if self.world.enabled and hasattr(posterior, "std"):
                z = _sample_shard(posterior, gen, self.world)  # (b, C, h, w)
            else:
                z = posterior.sample(gen)  # (B, C, h, w)
        return z.float()

    def on_start(self, batch: dict[str, Any]) -> None:
        """Measure ``scale_factor = 1 / std(z)`` on the first batch when ``scale_by_std`` is on."""
        if not self.spec.scale_by_std:
            return
        z = self._latents(image_batch(batch, self.spec.image_field).to(self.device), -1)
        z = distributed.gather_cat(self.world, z)  # (B, C, h, w): the global batch's spread
        std = float(z.flatten().std())
        if not std > 0:
            raise TrainingError("scale_by_std: the first batch's latents have zero spread")
        self.scale_factor = 1.0 / std
        self.pipe.scale_factor = self.scale_factor
        log.info("scale_by_std: scale_factor = %.6g (latent std %.6g)", self.scale_factor, std)

    # -- one step ------------------------------------------------------------------------------------
    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, Tensor]:
        spec = self.spec
        images = image_batch(batch, spec.image_field).to(self.device)  # (B, 3, H, W)
        z = self._latents(images, step) * self.scale_factor  # (B, C, h, w)
        if self.latent_size is None:
            self.latent_size = [int(z.shape[2]), int(z.shape[3])]
        gen = self.step_generator(step, "noise")
        schedule = self.pipe.schedule
        # drawn for the global batch, then this rank's rows: any number of ranks makes the same numbers
        total = z.shape[0] * self.world.size
        part = self.world.part(total)
        t = torch.randint(0, schedule.num_timesteps, (total,), generator=gen, device=self.device)[part]  # (B,)
        noise = torch.randn((total, *z.shape[1:]), generator=gen, device=self.device)[part]  # (B, C, h, w)
        x_t = schedule.add_noise(z, noise, t)
        with autocast(self.device, spec.precision):
            out = self.run(self._denoise, x_t, t, batch, step)  # (B, C, h, w)
        target = target_for(self.denoiser.prediction, z, noise, t, schedule.alphas_cumprod)
        loss = F.mse_loss(out.float(), target)
        self.nonfinite_step = not step_optimizer(loss, self.opt, self.sched, self.params, spec.grad_clip)
        if self.ema is not None:
            self.ema.update(step)
        return {"loss": loss.detach()}

    def _denoise(self, x_t: Tensor, t: Tensor, batch: dict[str, Any], step: int) -> Tensor:
        return self.denoiser(x_t, t, self._condition(batch, step))

    def _condition(self, batch: dict[str, Any], step: int):
        from ldmkit.conditioning import Conditioning

        if self.conditioner is None:
            return Conditioning()
        raw = self.raw_condition(batch)
        forward_train = getattr(self.conditioner, "forward_train", None)
        if callable(forward_train):
            # dropout draws on the CPU so the same step drops the same samples on any device
            gen = self.step_generator(step, "dropout", torch.device("cpu"))
            if not self.world.enabled:
                return forward_train(raw, generator=gen)
            # the draws are per sample of the global batch: condition it whole, keep this rank's rows
            pieces = distributed.gather_objects(self.world, map_tensors(raw, lambda v: v.cpu()))
            whole = map_tensors(distributed.concat_batches(pieces), lambda v: v.to(self.device))
            cond = forward_train(whole, generator=gen)
            return cond[self.world.part(cond.batch_size)]
        return self.conditioner(raw)

    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return fsdp.gather_if_sharded(
            self.world,
            {
                "denoiser": self.denoiser.state_dict(),
                "conditioner": self.conditioner.state_dict() if self.conditioner is not None else None,
                "optimizer": self.opt.state_dict(),
                "scheduler": scheduler_state(self.sched),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "scale_factor": self.scale_factor,
                "latent_size": self.latent_size,
            },
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.denoiser.load_state_dict(state["denoiser"])
        if self.conditioner is not None:
            self.conditioner.load_state_dict(state["conditioner"])
        self.opt.load_state_dict(state["optimizer"])
        load_scheduler_state(self.sched, state["scheduler"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise TrainingError("the checkpoint has no EMA weights, but the spec asks for ema")
            self.ema.load_state_dict(state["ema"])
        self.scale_factor = float(state["scale_factor"])
        self.pipe.scale_factor = self.scale_factor
        self.latent_size = state.get("latent_size")

    def export(self, out_dir: Path) -> Path:
        """A pipeline folder (``Pipeline.save``): EMA weights where kept, the measured scale_factor."""
        pipe = self.pipe
        if pipe.spec is not None and pipe.spec.latent_size is None and self.latent_size is not None:
            pipe.spec = pipe.spec.model_copy(update={"latent_size": self.latent_size})
        directory = out_dir / PIPELINE_DIR
        with fsdp.full_weights(self.world, self._trained, self.ema) as write:
            if not write:
                return directory
            try:
                pipe.save(directory)
            except (OSError, CheckpointError) as exc:
                raise TrainingError(f"cannot write the pipeline to {directory} ({exc})") from None
        return directory


def _sample_shard(posterior: Any, gen: torch.Generator, world: distributed.World) -> Tensor:
    """This rank's rows of a Gaussian posterior sample whose noise is drawn for the global batch."""
    mean = posterior.mean  # (b, C, h, w)
    total = mean.shape[0] * world.size
    noise = torch.randn((total, *mean.shape[1:]), generator=gen, device=gen.device, dtype=mean.dtype)
    return mean + posterior.std * noise[world.part(total)].to(mean.device)


def _init_skip(prefixes: list[str], modules: dict[str, nn.Module | None]) -> dict[str, tuple[str, ...]]:
    """``init_skip`` entries split per component; each must name weights that exist (a typo fails)."""
    out: dict[str, list[str]] = {name: [] for name in modules}
    for entry in prefixes:
        component, _, prefix = entry.partition(".")
        module = modules.get(component)
        if component not in modules or not prefix:
            raise SpecError(f"init_skip: {entry!r} must start with 'denoiser.' or 'conditioner.' and name a prefix")
        if module is None or not any(k.startswith(prefix) for k in module.state_dict()):
            raise SpecError(f"init_skip: {entry!r} matches no weights of the {component}")
        out[component].append(prefix)
    return {name: tuple(found) for name, found in out.items()}


def _composite_parts(conditioner: Any) -> list[str] | None:
    """Part names of a composite conditioner (its ``parts`` param), else None."""
    parts = getattr(getattr(conditioner, "params", None), "parts", None)
    return list(parts) if isinstance(parts, dict) else None
