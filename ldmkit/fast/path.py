"""The fast inference path of a pipeline: what :meth:`ldmkit.Pipeline.optimize` switches on."""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ldmkit.conditioning import Conditioning
from ldmkit.errors import NumericsError
from ldmkit.fast.config import FastConfig, fast_config
from ldmkit.fast.modules import FastDecoder, FastDenoiser
from ldmkit.guidance import DenoiseStep, guided_model_fn
from ldmkit.interfaces import FirstStage, ModelFn
from ldmkit.numerics import NonFiniteDecodeWarning, OnNonFinite, safe_decode
from ldmkit.schedules import NoiseSchedule

if TYPE_CHECKING:
    from ldmkit.pipeline import Pipeline

__all__ = ["FastPath", "optimize"]

log = logging.getLogger(__name__)


class FastPath:
    """A pipeline's denoiser and decoder prepared for speed (see :class:`FastConfig`).

    The pipeline's own components are not changed (except for an in-place channels_last layout
    when their dtype is already the requested one), so encoding, conditioning, training and saving
    work as before. Built for the pipeline's current device; :meth:`Pipeline.to` rebuilds it.
    It computes with copies of weights made when it was built (all of them in a reduced precision;
    the concatenated q/k/v, time and context projections of ``fuse_qkv``, ``merge_time_projections``
    and ``merge_context_projections`` in any): after changing weights, call :meth:`Pipeline.optimize` again.
    """

    def __init__(self, pipeline: Pipeline, config: FastConfig) -> None:
        self.config = config
        self.device = pipeline.device
        self.settings = config.resolve(self.device)
        self.denoiser = FastDenoiser(pipeline.denoiser, self.settings)
        self.decoder = FastDecoder(pipeline.first_stage, self.settings)
        log.info("fast path on %s: %s", self.device, self.settings)

    def rebuild(self, pipeline: Pipeline) -> FastPath:
        """A fast path with the same configuration, for the pipeline's current device and dtype."""
        return type(self)(pipeline, self.config)

    def denoise_step(self, schedule: NoiseSchedule) -> DenoiseStep:
        """One denoiser call on the fast path (see :func:`ldmkit.guidance.guided_model_fn`)."""
        return self.denoiser.denoise_step(schedule.alphas_cumprod)

    def model_fn(
        self, schedule: NoiseSchedule, cond: Conditioning, uncond: Conditioning | None, guidance_scale: float
    ) -> ModelFn:
        """``model_fn(x, t) -> eps`` with guidance, as :meth:`Pipeline.model_fn` returns it."""
        return guided_model_fn(self.denoise_step(schedule), cond, uncond, guidance_scale)

    def decode(self, reference: FirstStage, latents: Tensor, *, on_nonfinite: OnNonFinite = "retry") -> Tensor:
        """Images from unscaled latents; never NaN/Inf (a non-finite fast decode is redone by ``reference``)."""
        if not bool(torch.isfinite(latents).all()):
            raise NumericsError("the latents to decode contain NaN or Inf; sampling diverged before decoding")
        images = self.decoder(latents)
        if bool(torch.isfinite(images).all()):
            return images
        if self.settings.dtype == torch.float32:
            raise NumericsError("decoding produced NaN or Inf in float32; the first stage's weights may be broken")
        if on_nonfinite == "raise":
            raise NumericsError(
                f"decoding in {self.settings.dtype} produced NaN or Inf (reduced-precision overflow); "
                "pass on_nonfinite='retry' or optimize with precision='fp32'"
            )
        warnings.warn(
            f"decoding in {self.settings.dtype} produced NaN or Inf; decoding again with the pipeline's first stage",
            NonFiniteDecodeWarning,
            stacklevel=3,
        )
        return safe_decode(reference, latents.to(torch.float32), on_nonfinite=on_nonfinite)

    def describe(self) -> dict[str, Any]:
        """The settings in use and what the CUDA graph cache did (for logs and benchmarks)."""
        s = self.settings
        graphs = self.denoiser.graphs
        return {
            "device": str(self.device),
            "dtype": str(s.dtype).removeprefix("torch."),
            "channels_last": s.channels_last,
            "compile": s.compile_mode if s.compile else False,
            "cuda_graphs": s.cuda_graphs,
            "norm_kernels": s.norm_kernels,
            "geglu_kernel": s.geglu_kernel,
            "attention_kernel": s.attention_kernel,
            "fuse_qkv": s.fuse_qkv,
            "merge_time_projections": s.merge_time_projections,
            "merge_context_projections": s.merge_context_projections,
            "approximate_gelu": s.approximate_gelu,
            "cudnn_benchmark": s.cudnn_benchmark,
            "fp8_linear": s.fp8_linear,
            "graphs_captured": graphs.captures if graphs is not None else 0,
            "graph_failures": graphs.failures if graphs is not None else 0,
            "tile_size": s.tile_size,
        }


def optimize(pipeline: Pipeline, config: FastConfig | str | None = None, /, **overrides: Any) -> Pipeline:
    """Switch ``pipeline`` to the fast path (replacing any earlier one) and return it.

    ``config`` is a :class:`FastConfig` (or a precision name, short for ``FastConfig(precision=...)``);
    keyword ``overrides`` (``precision="fp16"``, ``tile_size=64`` ...) replace its settings. ``None``
    settings follow the device: all on for CUDA (bf16, channels_last, torch.compile with static
    shapes, CUDA graphs of each denoiser call), all off elsewhere. Compilation and graph capture
    happen on the first sampling call of each batch shape.
    """
    settings = fast_config(config, **overrides)
    with pipeline.lock:
        pipeline.fast = FastPath(pipeline, settings)
    return pipeline
