"""The fast path's attention kernel choice: FlashAttention-3's Hopper forward kernel, swapped into a denoiser.

PyTorch's SDPA (cuDNN on Hopper) runs SD v1's 40-wide heads with a 64-wide tile and computes the
softmax between the two products; FlashAttention-3 overlaps them (one warpgroup's softmax with
another's products). It comes from the optional ``fa3-fwd`` package (``pip install ldmkit[hopper]``:
a prebuilt bf16 forward-only build against torch's stable C ABI), so CI and other GPUs keep SDPA.

A denoiser meets it by declaring ``computes_attention = True`` on its attention modules: modules
with ``to_q``, ``to_k``, ``to_v`` (bias-free ``nn.Linear``), ``to_out`` (applied to the heads'
concatenated outputs), ``heads`` and ``scale``, whose forward is ``forward(x, context=None)`` with
softmax attention of queries from ``x`` over keys and values from ``context`` (or ``x``).
"""

from __future__ import annotations

import functools
import importlib
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldmkit.fast.support import swap_modules

__all__ = ["ATTENTION_KERNELS", "FlashAttention", "fa3_available", "fa3_unusable_reason", "with_flash_attention"]

log = logging.getLogger(__name__)

ATTENTION_KERNELS = ("sdpa", "fa3")
FA3_PACKAGE = "fa3-fwd"
FA3_MAX_HEAD_DIM = 256
# Fewer keys than this stay on SDPA: on an H100, SD v1's 77-key cross-attention took 96 us with
# FlashAttention-3 against 73 with cuDNN's SDPA; at 256 keys and more FlashAttention-3 was faster
# (21.9 against 24.4 us at 16x16; benchmarks/RESULTS.md, run R).
FA3_MIN_KEYS = 128


@functools.cache
def fa3_available() -> bool:
    """Whether the ``fa3-fwd`` package's kernel is importable.

    Its interface module loads the compiled kernel (``torch.ops.fa3_fwd.fwd``) and defines the
    ``torch.ops.fa3_fwd._flash_attn_forward`` operator around it, with the shape function that
    ``torch.compile`` traces through.
    """
    try:
        importlib.import_module("fa3_fwd_interface")
    except (ImportError, OSError) as exc:  # OSError: a build that does not load against this torch
        log.debug("fa3_fwd not usable: %s", exc)
        return False
    return hasattr(torch.ops.fa3_fwd, "_flash_attn_forward")


def fa3_unusable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the FlashAttention-3 kernel cannot run on ``device`` in ``dtype``; None if it can."""
    if not fa3_available():
        return f"the {FA3_PACKAGE} package is not installed (pip install 'ldmkit[hopper]')"
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"it runs on CUDA devices only, not {device}"
    index = device.index if device.index is not None else torch.cuda.current_device()
    if torch.cuda.get_device_capability(index)[0] != 9:
        return f"it is built for Hopper GPUs (sm_90); {torch.cuda.get_device_name(index)} is not one"
    if dtype != torch.bfloat16:
        return f"the {FA3_PACKAGE} build computes in bf16 only, not {str(dtype).removeprefix('torch.')}"
    return None


def kernel_applies(q: Tensor, k: Tensor) -> bool:
    """Whether the kernel takes these (B, N, heads, d) inputs and pays (else the module runs SDPA)."""
    return q.is_cuda and q.dtype == torch.bfloat16 and kernel_suits_shape(q.shape[-1], k.shape[-1], k.shape[1])


def kernel_suits_shape(head_dim: int, key_head_dim: int, keys: int) -> bool:
    """Whether FlashAttention-3 takes this head width and was measured faster than SDPA at this many keys."""
    fits = head_dim % 8 == 0 and head_dim <= FA3_MAX_HEAD_DIM and key_head_dim == head_dim
    return fits and keys >= FA3_MIN_KEYS


class FlashAttention(nn.Module):
    """An attention module (see the module docstring) computed by FlashAttention-3 where it applies.

    The projections are the source module's own (shared, not copied). The kernel reads q, k, v in
    (B, N, heads, d), the layout the projections produce, so no transposes are needed around it.
    """

    to_q: nn.Module
    to_k: nn.Module
    to_v: nn.Module
    to_out: nn.Module

    def __init__(self, source: Any) -> None:
        super().__init__()
        for name in ("to_q", "to_k", "to_v", "to_out"):
            if not isinstance(getattr(source, name, None), nn.Module):
                raise ValueError(f"{type(source).__name__} declares computes_attention but has no {name} module")
        self.to_q, self.to_k, self.to_v, self.to_out = source.to_q, source.to_k, source.to_v, source.to_out
        self.heads: int = int(source.heads)
        self.scale: float = float(source.scale)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """x (B, N, query_dim), context (B, L, context_dim) or None (self-attention) -> (B, N, query_dim)."""
        context = x if context is None else context
        b, n, _ = x.shape
        q = self.to_q(x).unflatten(-1, (self.heads, -1))  # (B, N, heads, d)
        k = self.to_k(context).unflatten(-1, (self.heads, -1))  # (B, L, heads, d)
        v = self.to_v(context).unflatten(-1, (self.heads, -1))  # (B, L, heads, d)
        if kernel_applies(q, k):
            out = torch.ops.fa3_fwd._flash_attn_forward(q, k, v, softmax_scale=self.scale)[0]  # (B, N, heads, d)
        else:
            out = sdpa_heads_last(q, k, v, self.scale)
        return self.to_out(out.reshape(b, n, -1))  # (B, N, query_dim)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, FlashAttention-3 at {FA3_MIN_KEYS} keys or more where it applies, else SDPA"


def sdpa_heads_last(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Softmax attention of (B, N, heads, d) inputs by SDPA -> (B, N, heads, d)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
    return out.transpose(1, 2)  # (B, N, heads, d)


def with_flash_attention(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose ``computes_attention`` modules are :class:`FlashAttention` (weights shared)."""
    return swap_modules(module, _declares_attention, FlashAttention)


def _declares_attention(module: Any) -> bool:
    return bool(getattr(module, "computes_attention", False))
