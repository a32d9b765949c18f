"""The denoiser and decoder of the fast path: reduced precision, channels_last, compiled, graphed.

Both wrap a pipeline component without changing it: when the requested precision differs from the
component's weights they hold a converted copy; otherwise they share the component (converting
its 4-D weights to channels_last in place when asked, which does not change what it computes).
Inputs are cast to the compute dtype at the boundary and results cast back, so the sampler's
state and the schedule arithmetic keep the caller's precision (float32 by default).
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from ldmkit.conditioning import Conditioning
from ldmkit.fast.attention import FA4_HOPPER_TILES, with_flash_attention
from ldmkit.fast.config import Resolved
from ldmkit.fast.context_projections import with_shared_context_projections
from ldmkit.fast.cudnn import autotuned_convolutions
from ldmkit.fast.fp8 import Fp8Linear, with_fp8_linears
from ldmkit.fast.geglu import with_kernel_geglu
from ldmkit.fast.graphs import GraphCache
from ldmkit.fast.norms import with_channels_last_group_norms, with_kernel_group_norms
from ldmkit.fast.tiling import tiled_decode
from ldmkit.fast.time_projections import with_shared_time_projections
from ldmkit.guidance import DenoiseStep, eps_from_output, guided_model_fn
from ldmkit.interfaces import Denoiser, FirstStage, ModelFn

__all__ = ["FastDecoder", "FastDenoiser", "compile_options", "maybe_compile", "prepare_module", "weights_dtype"]

log = logging.getLogger(__name__)

NormChoice = Literal["module", "channels_last", "kernels"]


def weights_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype of the module's first floating-point parameter (None without any)."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), None)


def prepare_module(module: nn.Module, settings: Resolved, norms: NormChoice = "module") -> nn.Module:
    """``module`` in the compute dtype and memory format; the weights are copied only if the dtype changes.

    ``norms`` may swap its GroupNorms, in a structural copy (the caller's module keeps its own):
    "channels_last" for :class:`~ldmkit.fast.norms.ChannelsLastGroupNorm` when it is compiled in
    channels_last, "kernels" for :class:`~ldmkit.fast.norms.KernelGroupNorm` when the settings ask
    for the norm kernels.
    """
    current = weights_dtype(module)
    if current is not None and current != settings.dtype:
        module = copy.deepcopy(module).to(dtype=settings.dtype)
    if settings.channels_last:
        module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch stubs omit it
    if norms == "channels_last" and settings.channels_last and settings.compile:
        module = with_channels_last_group_norms(module)
    elif norms == "kernels" and settings.norm_kernels:
        module = with_kernel_group_norms(module)
    return module.eval()


def compile_options(mode: str) -> dict[str, Any]:
    """Inductor options of a ``torch.compile`` mode (one dict, so benchmarks can give a peer the same)."""
    import torch._inductor

    return dict(torch._inductor.list_mode_options(mode, dynamic=False))  # the fast path compiles static shapes


# inductor's matrix-product autotuning alone (FastConfig.autotune_matmuls): its Triton templates timed
# against cuBLAS per product; convolutions stay with cuDNN, the other kernels untuned
MATMUL_AUTOTUNE_OPTIONS: dict[str, Any] = {"max_autotune_gemm": True, "max_autotune_gemm_backends": "ATEN,TRITON"}


def maybe_compile(
    fn: Callable, settings: Resolved, merge_identical: bool = False, autotune_matmuls: bool = False
) -> Callable:
    """``torch.compile`` with static shapes when asked (compilation happens on the first call).

    ``merge_identical`` adds the pass that computes repeated identical operations once
    (:class:`ldmkit.fast.merge_pass.MergeIdenticalOps`); ``autotune_matmuls`` the compiler's matrix-product
    autotuning (:data:`MATMUL_AUTOTUNE_OPTIONS`).
    """
    if not settings.compile:
        return fn
    options = compile_options(settings.compile_mode)
    if autotune_matmuls:
        options.update(MATMUL_AUTOTUNE_OPTIONS)
    if merge_identical:
        from ldmkit.fast.merge_pass import MergeIdenticalOps

        options["post_grad_custom_pre_pass"] = MergeIdenticalOps()
    return torch.compile(fn, dynamic=False, options=options)


class FastDenoiser:
    """Runs a denoiser in the fast path's precision; ``model_fn`` adds guidance as one batched call."""

    def __init__(self, denoiser: Denoiser, settings: Resolved) -> None:
        self.settings = settings
        # copies that swap submodules only: the module is still the denoiser's class
        self.module = cast(Denoiser, prepare_module(denoiser, settings, norms="kernels"))
        if settings.geglu_kernel:
            self.module = cast(Denoiser, with_kernel_geglu(self.module, settings.approximate_gelu))
        if settings.attention_kernel in ("fa3", "fa4"):
            tiles = FA4_HOPPER_TILES if settings.attention_tiles else None
            flash = with_flash_attention(self.module, settings.attention_kernel, settings.fuse_qkv, tiles)
            self.module = cast(Denoiser, flash)
        if settings.merge_time_projections:
            self.module = cast(Denoiser, with_shared_time_projections(self.module))
        if settings.merge_context_projections:
            self.module = cast(Denoiser, with_shared_context_projections(self.module))
        if settings.fp8_linear:  # after the GEGLU swap: GEGLUs on the kernel keep it
            self.module = cast(Denoiser, with_fp8_linears(self.module))
            swapped = sum(isinstance(m, Fp8Linear) for m in self.module.modules())
            linears = swapped + sum(isinstance(m, nn.Linear) for m in self.module.modules())
            log.info("fp8_linear: %d of the denoiser's %d linear layers compute in fp8", swapped, linears)
        self.prediction = denoiser.prediction
        merge = settings.merge_time_projections or settings.merge_context_projections
        tune = settings.autotune_matmuls
        self._net = maybe_compile(self._forward, settings, merge_identical=merge, autotune_matmuls=tune)
        self._net_guided = maybe_compile(self._forward_guided, settings, merge_identical=merge, autotune_matmuls=tune)
        self.graphs = GraphCache(settings.max_graphs) if settings.cuda_graphs else None
        self._alphas: tuple[Tensor, Tensor] | None = None  # (schedule tensor, its copy on the device)

    def _forward(self, x: Tensor, t: Tensor, crossattn: Tensor | None, concat: Tensor | None, vector: Tensor | None):
        """The denoiser on plain tensors (what torch.compile traces)."""
        return self.module(x, t, Conditioning(crossattn=crossattn, concat=concat, vector=vector))

    def _forward_guided(
        self, x: Tensor, t: Tensor, crossattn: Tensor | None, concat: Tensor | None, vector: Tensor | None
    ):
        """Both halves of a guided call (the conditioning holds 2B rows) on plain tensors."""
        return self.module.forward_guided(x, t, Conditioning(crossattn=crossattn, concat=concat, vector=vector))

    def _device_alphas(self, alphas_cumprod: Tensor, device: torch.device) -> Tensor:
        """The schedule's alphas_cumprod on ``device``, copied once rather than at every step."""
        cached = self._alphas
        if cached is None or cached[0] is not alphas_cumprod or cached[1].device != device:
            cached = (alphas_cumprod, alphas_cumprod.to(device))
            self._alphas = cached
        return cached[1]

    def _cast(self, value: Tensor | None, device: torch.device, spatial: bool = False) -> Tensor | None:
        """A conditioning tensor on ``device``, floating point ones in the compute dtype."""
        if value is None:
            return None
        dtype = self.settings.dtype if value.is_floating_point() else value.dtype
        value = value.to(device=device, dtype=dtype)
        return value.contiguous(memory_format=self.settings.memory_format) if spatial else value

    def step(
        self,
        x: Tensor,
        t: Tensor,
        crossattn: Tensor | None,
        concat: Tensor | None,
        vector: Tensor | None,
        alphas: Tensor,
        scale: float | None,
    ) -> Tensor:
        """Epsilon (in x's dtype) at (x, t); with ``scale`` the conditioning holds [uncond; cond] (2B rows)."""
        h = x.to(self.settings.dtype).contiguous(memory_format=self.settings.memory_format)
        net = self._net if scale is None else self._net_guided
        out = net(h, t, crossattn, concat, vector).to(x.dtype)  # (B, C, h, w), or (2B, C, h, w) guided
        return eps_from_output(out, x, t, alphas, self.prediction, scale).contiguous()

    def denoise_step(self, alphas_cumprod: Tensor) -> DenoiseStep:
        """The fast path's :data:`~ldmkit.guidance.DenoiseStep` (CUDA graphs replayed where they are on)."""
        # the conditioning is cast once per device, not at every step
        prepared: dict[torch.device, tuple[Conditioning, tuple[Tensor | None, ...]]] = {}

        def denoise(x: Tensor, t: Tensor, conditioning: Conditioning, scale: float | None) -> Tensor:
            cached = prepared.get(x.device)
            if cached is None or cached[0] is not conditioning:
                cast = (
                    self._cast(conditioning.crossattn, x.device),
                    self._cast(conditioning.concat, x.device, spatial=True),
                    self._cast(conditioning.vector, x.device),
                )
                cached = prepared[x.device] = (conditioning, cast)
            crossattn, concat, vector = cached[1]
            alphas = self._device_alphas(alphas_cumprod, x.device)
            with autotuned_convolutions(self.settings.cudnn_benchmark and x.is_cuda):
                if self.graphs is not None and x.is_cuda:
                    run = functools.partial(self.step, alphas=alphas, scale=scale)
                    return self.graphs((scale, self.prediction), run, x, t, crossattn, concat, vector)
                return self.step(x, t, crossattn, concat, vector, alphas, scale)

        return denoise

    def model_fn(
        self, alphas_cumprod: Tensor, cond: Conditioning, uncond: Conditioning | None, guidance_scale: float
    ) -> ModelFn:
        """``model_fn(x, t) -> eps`` as :meth:`ldmkit.Pipeline.model_fn` defines it, on the fast path."""
        return guided_model_fn(self.denoise_step(alphas_cumprod), cond, uncond, guidance_scale)


class FastDecoder:
    """Decodes latents with a first stage in the fast path's precision, tile by tile when they are large."""

    def __init__(self, first_stage: FirstStage, settings: Resolved) -> None:
        self.settings = settings
        # On an H200 this decoded a 512x512 picture in 7.0 ms against 8.0-9.1 ms with the compiler's
        # own GroupNorm; the UNet measured the same either way, so the denoiser keeps the original.
        self.module = cast(FirstStage, prepare_module(first_stage, settings, norms="channels_last"))
        self._decode = maybe_compile(self.module.decode, settings)

    def __call__(self, latents: Tensor) -> Tensor:
        """Latents (B, C, h, w) -> images (B, 3, h*f, w*f) in the latents' dtype."""
        z = latents.to(self.settings.dtype).contiguous(memory_format=self.settings.memory_format)
        tile = self.settings.tile_size
        with autotuned_convolutions(self.settings.cudnn_benchmark and z.is_cuda):
            if tile is not None and max(z.shape[-2:]) > tile:
                overlap = self.settings.tile_overlap
                images = tiled_decode(self._decode, z, tile=tile, overlap=overlap, pad=overlap)
            else:
                images = self._decode(z)  # (B, 3, H, W)
        return images.to(latents.dtype).contiguous()
