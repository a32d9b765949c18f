"""The anchor of gpu_sampling.py: diffusers on ldmkit's weights, at its stock and at its best documented settings.

Three forms of the same bf16 channels_last ``UNet2DConditionModel``:

Every form runs with cuDNN's convolution autotuner on, as diffusers documents.

- eager (PyTorch's SDPA attention);
- stock compile: ``torch.compile`` with the inductor options of ldmkit's fast path (a like-for-like row);
- best: fused q/k/v projections (``fuse_qkv_projections``), channels_last and
  ``torch.compile(mode="reduce-overhead", fullgraph=True)``, whose CUDA graphs remove the launch overhead
  (diffusers' documented recipe without max-autotune, whose compilation outlasts a benchmark run here).

The best form lives in a copy of the module, so fusing does not change the other two.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger("gpu_diffusers")

EAGER = "diffusers eager bf16 (SDPA)"
STOCK = "diffusers bf16 channels_last torch.compile"
BEST = "diffusers bf16 channels_last, fused q/k/v, torch.compile reduce-overhead (CUDA graphs)"


def convert(unet: torch.nn.Module, vae: torch.nn.Module) -> tuple[Any, Any, str] | None:
    """ldmkit's UNet and KL autoencoder as diffusers modules (float32, same device), and diffusers' version.

    None when diffusers is not installed.
    """
    try:
        import diffusers
    except ImportError:
        return None
    from ldmkit.diffusers_interop import autoencoder_to_diffusers, unet_to_diffusers

    device = next(unet.parameters()).device
    config, state = unet_to_diffusers(unet)
    d_unet = diffusers.UNet2DConditionModel.from_config(config)
    d_unet.load_state_dict(state, strict=True)
    config, state = autoencoder_to_diffusers(vae, scaling_factor=0.18215)
    d_vae = diffusers.AutoencoderKL.from_config(config)
    d_vae.load_state_dict(state, strict=True)
    return d_unet.eval().to(device), d_vae.eval().to(device), diffusers.__version__


def autotuned_call(module: Any, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    """One UNet call with cuDNN's convolution autotuner on (diffusers documents
    ``torch.backends.cudnn.benchmark = True``; ldmkit's fast path turns it on around its own calls)."""
    from ldmkit.fast.cudnn import autotuned_convolutions

    with autotuned_convolutions(True):
        return module(x, t, encoder_hidden_states=ctx, return_dict=False)[0]


class Anchor:
    """diffusers' UNet in its three forms (see the module docstring); each compiles on its first call."""

    def __init__(self, d_unet: Any, compile_: bool, stock_options: dict[str, Any]) -> None:
        self.eager = d_unet.to(torch.bfloat16, memory_format=torch.channels_last)
        fused = copy.deepcopy(self.eager)
        fused.fuse_qkv_projections()  # one (3C, C) projection for self-attention, (2C, C) for cross-attention
        self.fused = fused.to(memory_format=torch.channels_last)
        self.stock = self.best = None
        if compile_:
            self.stock = torch.compile(self.eager, dynamic=False, options=stock_options)
            # the settings diffusers documents for torch.compile with CUDA graphs; static shapes, a graph per batch
            self.best = torch.compile(self.fused, mode="reduce-overhead", fullgraph=True, dynamic=False)
        self.stock_options = stock_options

    def calls(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
        """name -> a call of that form on (x, t, ctx) in bf16 (compiled forms only where compiling is on)."""
        x16 = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)  # (B, 4, h, w)
        ctx16 = ctx.to(torch.bfloat16)  # (B, 77, D)
        found: dict[str, Callable[[], torch.Tensor]] = {}
        for name, module in ((EAGER, self.eager), (STOCK, self.stock), (BEST, self.best)):
            if module is not None:
                found[name] = functools.partial(autotuned_call, module, x16, t, ctx16)
        return found

    def describe(self) -> str:
        return (
            f"'{STOCK}': inductor options {self.stock_options} (those of ldmkit's fast path); "
            f"'{BEST}': `fuse_qkv_projections()`, channels_last, "
            '`torch.compile(mode="reduce-overhead", fullgraph=True, dynamic=False)`'
        )
