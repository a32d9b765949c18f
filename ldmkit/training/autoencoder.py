"""First-stage training: reconstruction + KL (or codebook) loss, and a patch-GAN switched on at ``disc_start``.

KL autoencoders follow the reference ``LPIPSWithDiscriminator``: ``nll = rec / exp(logvar) + logvar`` summed
over pixels and averaged over the batch, plus ``kl_weight * KL``. VQ autoencoders follow
``VQLPIPSWithDiscriminator``: the mean of ``rec`` plus ``codebook_weight * codebook_loss``. In both,
``rec = l1_weight * |x - x_rec| + perceptual_weight * perceptual(x, x_rec)`` and, from ``disc_start`` on, the
generator term ``d_weight * disc_factor * (-mean D(x_rec))`` is added and the discriminator takes a hinge-loss step.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ldmkit.errors import TrainingError
from ldmkit.interfaces import FirstStage
from ldmkit.training import distributed, fsdp
from ldmkit.training.ema import EMA
from ldmkit.training.export import save_weights, write_component_spec
from ldmkit.training.losses import NLayerDiscriminator, PerceptualLoss, adaptive_weight, disc_factor_at, hinge_d_loss
from ldmkit.training.optim import autocast, build_optimizer, load_scheduler_state, scheduler_state, step_optimizer
from ldmkit.training.spec import AutoencoderTrainSpec
from ldmkit.training.stage import Stage, create_component, image_batch

log = logging.getLogger(__name__)

WEIGHTS_FILE = "first_stage.safetensors"
SPEC_FILE = "first_stage.yaml"


class AutoencoderStage(Stage):
    """Trains a registered first stage (KL or VQ) on dataset images."""

    spec: AutoencoderTrainSpec

    def __init__(self, spec: AutoencoderTrainSpec, device: torch.device, registry=None) -> None:
        from ldmkit.registry import get_registry

        super().__init__(spec, device)
        registry = registry or get_registry()
        model = create_component(registry, "first_stage", spec.first_stage, "first_stage")
        self.model: FirstStage = model.to(device).train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise TrainingError(f"first stage {spec.first_stage.type!r} has no trainable weights")
        self.vq = hasattr(model, "quantize_latents")
        self.is_kl = not self.vq
        loss = spec.loss
        channels = getattr(model.params, "out_ch", 0) or getattr(model.params, "in_channels", 3)
        self.discriminator = NLayerDiscriminator(channels, loss.disc_ndf, loss.disc_num_layers).to(device).train()
        self.perceptual = None
        if loss.perceptual_weights is not None and loss.perceptual_weight > 0:
            self.perceptual = PerceptualLoss.from_file(loss.perceptual_weights).to(device)
        self.logvar = torch.full((), loss.logvar_init, device=device)  # not optimized, as in the reference
        self.last_layer = _last_layer(model)
        if loss.adaptive_weight and self.last_layer is None and loss.disc_start < spec.max_steps:
            log.warning("the first stage exposes no decoder.conv_out: the GAN term uses the fixed disc_weight")
        self.opt, self.sched = build_optimizer(self.params, spec.optimizer)
        self.opt_disc, self.sched_disc = build_optimizer(self.discriminator.parameters(), spec.optimizer, loss.disc_lr)
        if spec.ema is not None:
            self.ema = EMA({"first_stage": self.model}, spec.ema.decay, spec.ema.start, spec.ema.warmup)
        self.terms = ["loss", "rec_loss", "nll_loss", "kl_loss" if self.is_kl else "codebook_loss"]
        if self.perceptual is not None:
            self.terms.append("p_loss")
        self.terms += ["g_loss", "d_weight", "disc_factor", "disc_loss"]
        self.world = distributed.SINGLE
        self.run: distributed.Runner = distributed.direct
        self.run_disc: distributed.Runner = distributed.direct

    def distribute(self, world: distributed.World) -> None:
        """Train as one of ``world.size`` processes: gradients of both networks are averaged."""
        self.world = world
        if world.enabled and self.device.type == "cuda":
            # batch statistics of the global batch, as one process sees them
            self.discriminator = nn.SyncBatchNorm.convert_sync_batchnorm(self.discriminator)
        elif world.enabled and self.spec.loss.disc_start < self.spec.max_steps:
            log.warning("on the CPU the discriminator's BatchNorm normalises each rank's shard on its own")
        if fsdp.sharded(world):
            done = fsdp.shard(
                world, {"first_stage": self.model}, self.device, self.params, self.opt, self.sched, self.ema
            )
            self.run, self.params, self.opt, self.sched = done.run, done.params, done.opt, done.sched
            disc = list(self.discriminator.parameters())
            done = fsdp.shard(
                world, {"discriminator": self.discriminator}, self.device, disc, self.opt_disc, self.sched_disc
            )
            self.run_disc, self.opt_disc, self.sched_disc = done.run, done.opt, done.sched
            return
        self.run = distributed.wrap(world, {"first_stage": self.model}, self.device)
        self.run_disc = distributed.wrap(world, {"discriminator": self.discriminator}, self.device)

    def model_spec(self) -> dict[str, Any]:
        return {"first_stage": self.spec.first_stage.model_dump(mode="json")}

    # -- one step ------------------------------------------------------------------------------------
    def _reconstruct(self, images: Tensor, step: int) -> tuple[Tensor, Tensor, Any]:
        """(reconstruction, regularizer per sample or codebook loss, posterior or None)."""
        if self.vq:
            vq: Any = self.model  # a VQ first stage: quantize_latents, and decode(force_not_quantize=...)
            h = vq.encode(images)  # (B, C, h, w) before quantization
            quant, codebook_loss, _ = vq.quantize_latents(h, self.step_generator(step, "quantize"))
            # the latents are already on the codebook (with a straight-through gradient): decode them as they are
            return vq.decode(quant, force_not_quantize=True), codebook_loss, None
        posterior = self.model.encode_distribution(images)
        gen = self.step_generator(step, "posterior")
        if self.world.enabled:
            from ldmkit.training.ldm import _sample_shard

            z = _sample_shard(posterior, gen, self.world)  # (b, C, h, w): this rank's rows of the global draw
        else:
            z = posterior.sample(gen)  # (B, C, h, w)
        return self.model.decode(z), posterior.kl(), posterior

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, Tensor]:
        spec, loss_spec = self.spec, self.spec.loss
        images = image_batch(batch, spec.image_field).to(self.device)  # (B, 3, H, W)
        batch_size = images.shape[0]
        with autocast(self.device, spec.precision):
            rec, reg, _ = self.run(self._reconstruct, images, step)
        rec = rec.float()
        rec_loss = loss_spec.l1_weight * (images - rec).abs()  # (B, 3, H, W)
        out: dict[str, Tensor] = {}
        if self.perceptual is not None:
            p_loss = self.perceptual(images, rec)  # (B, 1, 1, 1)
            rec_loss = rec_loss + loss_spec.perceptual_weight * p_loss
            out["p_loss"] = p_loss.detach().mean()
        if self.is_kl:
            nll = rec_loss / torch.exp(self.logvar) + self.logvar
            nll_loss = nll.sum() / batch_size
            kl_loss = reg.float().sum() / batch_size
            loss = nll_loss + loss_spec.kl_weight * kl_loss
            out["kl_loss"] = kl_loss.detach()
        else:
            nll_loss = rec_loss.mean()
            codebook_loss = reg.float().mean()
            loss = nll_loss + loss_spec.codebook_weight * codebook_loss
            out["codebook_loss"] = codebook_loss.detach()
        factor = disc_factor_at(loss_spec.disc_factor, step, loss_spec.disc_start)
        g_loss = d_weight = torch.zeros((), device=self.device)
        if factor > 0:
            with autocast(self.device, spec.precision):
                logits_fake = self.run_disc(self.discriminator, rec)
            g_loss = -logits_fake.float().mean()
            if loss_spec.adaptive_weight and self.last_layer is not None:
                d_weight = self._adaptive_weight(nll_loss, g_loss, loss_spec.disc_weight)
            else:
                d_weight = torch.tensor(loss_spec.disc_weight, device=self.device)
            loss = loss + d_weight * factor * g_loss
        self.nonfinite_step = not step_optimizer(loss, self.opt, self.sched, self.params, spec.grad_clip)
        d_loss = torch.zeros((), device=self.device)
        if factor > 0:
            with autocast(self.device, spec.precision):
                logits_real = self.run_disc(self.discriminator, images)
                logits_fake = self.run_disc(self.discriminator, rec.detach())
            d_loss = factor * hinge_d_loss(logits_real.float(), logits_fake.float())
            disc_ok = step_optimizer(
                d_loss, self.opt_disc, self.sched_disc, list(self.discriminator.parameters()), spec.grad_clip
            )
            self.nonfinite_step = self.nonfinite_step or not disc_ok
        if self.ema is not None:
            self.ema.update(step)
        out.update(
            loss=loss.detach(),
            rec_loss=rec_loss.detach().mean(),
            nll_loss=nll_loss.detach(),
            g_loss=g_loss.detach(),
            d_weight=d_weight.detach(),
            disc_factor=torch.tensor(factor),
            disc_loss=d_loss.detach(),
        )
        return out

    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {
            "first_stage": self.model.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": scheduler_state(self.sched),
            "disc_optimizer": self.opt_disc.state_dict(),
            "disc_scheduler": scheduler_state(self.sched_disc),
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }
        return fsdp.gather_if_sharded(self.world, state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["first_stage"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt.load_state_dict(state["optimizer"])
        load_scheduler_state(self.sched, state["scheduler"])
        self.opt_disc.load_state_dict(state["disc_optimizer"])
        load_scheduler_state(self.sched_disc, state["disc_scheduler"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise TrainingError("the checkpoint has no EMA weights, but the spec asks for ema")
            self.ema.load_state_dict(state["ema"])

    def _adaptive_weight(self, nll_loss: Tensor, g_loss: Tensor, disc_weight: float) -> Tensor:
        """The adaptive GAN weight; across ranks from the global batch's gradients at the last layer."""
        assert self.last_layer is not None
        if not self.world.enabled:
            return adaptive_weight(nll_loss, g_loss, self.last_layer, disc_weight)
        import torch.distributed as dist

        # FSDP puts the gathered weight in the module for the step: the one the graph used
        last_layer = _last_layer(self.model) if fsdp.sharded(self.world) else self.last_layer
        assert last_layer is not None  # the same decoder.conv_out, gathered
        nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
        g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        both = torch.stack([nll_grads, g_grads])  # (2, *last_layer.shape)
        dist.all_reduce(both)
        both /= self.world.size
        weight = torch.norm(both[0]) / (torch.norm(both[1]) + 1e-4)
        return torch.clamp(weight, 0.0, 1e4).detach() * disc_weight

    def export(self, out_dir: Path) -> Path:
        """``first_stage.safetensors`` (EMA weights when kept) and ``first_stage.yaml`` (its component spec)."""
        path = out_dir / WEIGHTS_FILE
        with fsdp.full_weights(self.world, {"first_stage": self.model}, self.ema) as write:
            if not write:
                return path
            save_weights(self.model, path)
        write_component_spec(self.spec.first_stage, out_dir / SPEC_FILE)
        return path


def _last_layer(model: nn.Module) -> Tensor | None:
    """The decoder's output conv weight (where the reference measures the adaptive GAN weight)."""
    getter = getattr(model, "get_last_layer", None)
    if callable(getter):
        return getter()
    conv_out = getattr(getattr(model, "decoder", None), "conv_out", None)
    return getattr(conv_out, "weight", None)
