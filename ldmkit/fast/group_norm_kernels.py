"""Triton kernels for GroupNorm (optionally followed by SiLU) on channels_last tensors.

A channels_last (B, C, H, W) tensor is stored as (B, H*W, C). The compiler's own GroupNorm reads
it group by group, C/G channels at a time (20 to 160 bytes) across a 2*C-byte stride, and reached
about a third of the memory bandwidth on an H200. These kernels read whole rows of channels:

1. ``partial_moments``: per (row block, channel block) tile, the per-channel mean and sum of
   squared deviations of its H*W block (two passes over the tile in registers, so a large mean
   does not cost the variance its digits);
2. ``group_scale_shift``: combines the partials of each (batch row, group) with Chan's formula and
   folds mean, 1/std and the affine weights into one float32 scale and shift per (B, C);
3. ``scale_shift_apply``: ``y = x * scale + shift`` (then ``y * sigmoid(y)`` when asked), written
   in the input's dtype and layout.

An optional per-(B, C) ``add`` (a residual block's timestep embedding) is added to x in float32
inside both passes, so the sum is never rounded to the input's dtype before it is normalised.

Statistics and arithmetic are float32 whatever the input's dtype, as in the UNet's GroupNorm32.
The op is registered as ``ldmkit::group_norm_nhwc`` so ``torch.compile`` calls it as one opaque
operation and CUDA graphs capture its launches.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

# Tile of the moment and apply kernels: BLOCK_HW spatial positions x BLOCK_C channels. The
# fastest or within 3% of it at every SD v1 UNet shape on an H200 (benchmarks/RESULTS.md).
BLOCK_HW = 128
BLOCK_C = 32
APPLY_WARPS = 4


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported (it ships with CUDA builds of torch, not with CPU builds)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@functools.cache
def _kernels():  # noqa: ANN202 - the jitted functions have no useful static type
    import triton
    import triton.language as tl

    @triton.jit
    def partial_moments(
        x_ptr,
        add_ptr,
        mean_ptr,
        m2_ptr,
        HW,
        C,
        n_hw,
        HAS_ADD: tl.constexpr,
        BLOCK_HW: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        # grid (B * n_hw, n_c); partials are laid out (B, n_hw, C); ``add`` (B, C) is added to x first
        pid = tl.program_id(0)
        b = pid // n_hw
        blk = pid % n_hw
        rows = blk * BLOCK_HW + tl.arange(0, BLOCK_HW)  # (BLOCK_HW,)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)  # (BLOCK_C,)
        mask = (rows < HW)[:, None] & (cols < C)[None, :]
        offsets = b.to(tl.int64) * HW * C + rows[:, None] * C + cols[None, :]
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_HW, BLOCK_C)
        if HAS_ADD:
            add = tl.load(add_ptr + b * C + cols, mask=cols < C, other=0.0).to(tl.float32)  # (BLOCK_C,)
            x = tl.where(mask, x + add[None, :], 0.0)  # masked positions must stay out of the sums
        count = tl.minimum(HW - blk * BLOCK_HW, BLOCK_HW).to(tl.float32)
        mean = tl.sum(x, axis=0) / count  # (BLOCK_C,)
        dev = tl.where(mask, x - mean[None, :], 0.0)
        m2 = tl.sum(dev * dev, axis=0)  # (BLOCK_C,)
        out = pid.to(tl.int64) * C + cols
        tl.store(mean_ptr + out, mean, mask=cols < C)
        tl.store(m2_ptr + out, m2, mask=cols < C)

    @triton.jit
    def group_scale_shift(
        mean_ptr,
        m2_ptr,
        weight_ptr,
        bias_ptr,
        scale_ptr,
        shift_ptr,
        HW,
        C,
        G,
        n_hw,
        eps,
        HAS_WEIGHT: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        BLOCK_HW: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_CPG: tl.constexpr,
    ):
        # grid (B * G,): one program combines the (n_hw, C/G) partials of one group of one row
        pid = tl.program_id(0)
        b = pid // G
        g = pid % G
        cpg = C // G
        j = tl.arange(0, BLOCK_CPG)  # (BLOCK_CPG,) channel within the group
        cmask = j < cpg
        total = (HW * cpg).to(tl.float32)
        base = b.to(tl.int64) * n_hw * C + g * cpg
        weighted = tl.zeros((BLOCK_N, BLOCK_CPG), dtype=tl.float32)
        for start in range(0, n_hw, BLOCK_N):
            i = start + tl.arange(0, BLOCK_N)  # (BLOCK_N,) row block
            mask = (i < n_hw)[:, None] & cmask[None, :]
            count = tl.where(i < n_hw, tl.minimum(HW - i * BLOCK_HW, BLOCK_HW), 0).to(tl.float32)
            mean_i = tl.load(mean_ptr + base + i[:, None] * C + j[None, :], mask=mask, other=0.0)
            weighted += mean_i * count[:, None]
        mean = tl.sum(tl.sum(weighted, axis=1), axis=0) / total
        m2 = tl.zeros((BLOCK_N, BLOCK_CPG), dtype=tl.float32)
        for start in range(0, n_hw, BLOCK_N):
            i = start + tl.arange(0, BLOCK_N)
            mask = (i < n_hw)[:, None] & cmask[None, :]
            count = tl.where(i < n_hw, tl.minimum(HW - i * BLOCK_HW, BLOCK_HW), 0).to(tl.float32)
            offsets = base + i[:, None] * C + j[None, :]
            mean_i = tl.load(mean_ptr + offsets, mask=mask, other=0.0)
            m2_i = tl.load(m2_ptr + offsets, mask=mask, other=0.0)
            dev = tl.where(mask, mean_i - mean, 0.0)
            m2 += m2_i + count[:, None] * dev * dev
        rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(m2, axis=1), axis=0) / total + eps)
        channel = g * cpg + j
        scale = tl.zeros((BLOCK_CPG,), dtype=tl.float32) + rstd
        if HAS_WEIGHT:
            scale = scale * tl.load(weight_ptr + channel, mask=cmask, other=0.0).to(tl.float32)
        shift = -mean * scale
        if HAS_BIAS:
            shift = shift + tl.load(bias_ptr + channel, mask=cmask, other=0.0).to(tl.float32)
        tl.store(scale_ptr + b * C + channel, scale, mask=cmask)
        tl.store(shift_ptr + b * C + channel, shift, mask=cmask)

    @triton.jit
    def scale_shift_apply(
        x_ptr,
        add_ptr,
        scale_ptr,
        shift_ptr,
        y_ptr,
        HW,
        C,
        n_hw,
        HAS_ADD: tl.constexpr,
        SILU: tl.constexpr,
        BLOCK_HW: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        # grid (B * n_hw, n_c)
        pid = tl.program_id(0)
        b = pid // n_hw
        rows = (pid % n_hw) * BLOCK_HW + tl.arange(0, BLOCK_HW)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = (rows < HW)[:, None] & (cols < C)[None, :]
        offsets = b.to(tl.int64) * HW * C + rows[:, None] * C + cols[None, :]
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_HW, BLOCK_C)
        scale = tl.load(scale_ptr + b * C + cols, mask=cols < C, other=0.0)  # (BLOCK_C,)
        shift = tl.load(shift_ptr + b * C + cols, mask=cols < C, other=0.0)
        if HAS_ADD:  # (x + add) * scale + shift
            shift += scale * tl.load(add_ptr + b * C + cols, mask=cols < C, other=0.0).to(tl.float32)
        y = x * scale[None, :] + shift[None, :]
        if SILU:
            y = y * tl.sigmoid(y)
        tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)

    return partial_moments, group_scale_shift, scale_shift_apply


def group_norm_nhwc_reference(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    groups: int,
    eps: float,
    silu: bool,
    add: Tensor | None = None,
) -> Tensor:
    """What the kernels compute, in torch operations: float32 GroupNorm (+ SiLU) of x (+ add), in x's dtype."""
    w = None if weight is None else weight.float()
    b = None if bias is None else bias.float()
    xf = x.float() if add is None else x.float() + add.float()[:, :, None, None]
    y = torch.nn.functional.group_norm(xf, groups, w, b, eps)
    if silu:
        y = torch.nn.functional.silu(y)
    return y.to(x.dtype)


def launch_group_norm(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    groups: int,
    eps: float,
    silu: bool,
    add: Tensor | None = None,
    block_hw: int = BLOCK_HW,
    block_c: int = BLOCK_C,
    warps: int = APPLY_WARPS,
) -> Tensor:
    """The three kernels on a 4-D channels_last ``x`` (plus ``add`` (B, C), if given) with the given tile."""
    partial_moments, group_scale_shift, scale_shift_apply = _kernels()
    batch, channels, height, width = x.shape
    hw = height * width
    n_hw = -(-hw // block_hw)
    n_c = -(-channels // block_c)
    means = torch.empty((batch, n_hw, channels), device=x.device, dtype=torch.float32)
    m2s = torch.empty_like(means)
    tile = dict(BLOCK_HW=block_hw, BLOCK_C=block_c, num_warps=warps)
    add_arg = add if add is not None else x  # a placeholder pointer when there is nothing to add
    has_add = add is not None
    partial_moments[(batch * n_hw, n_c)](x, add_arg, means, m2s, hw, channels, n_hw, HAS_ADD=has_add, **tile)
    scale = torch.empty((batch, channels), device=x.device, dtype=torch.float32)
    shift = torch.empty_like(scale)
    group_scale_shift[(batch * groups,)](
        means,
        m2s,
        weight if weight is not None else scale,  # a placeholder pointer when there is no weight
        bias if bias is not None else shift,
        scale,
        shift,
        hw,
        channels,
        groups,
        n_hw,
        eps,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
        BLOCK_HW=block_hw,
        BLOCK_N=min(64, _next_power_of_2(n_hw)),
        BLOCK_CPG=_next_power_of_2(channels // groups),
    )
    y = torch.empty_like(x)  # keeps the channels_last strides
    scale_shift_apply[(batch * n_hw, n_c)](
        x, add_arg, scale, shift, y, hw, channels, n_hw, HAS_ADD=has_add, SILU=silu, **tile
    )
    return y


@torch.library.custom_op("ldmkit::group_norm_nhwc", mutates_args=())
def group_norm_nhwc(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    groups: int,
    eps: float,
    silu: bool,
    add: Tensor | None = None,
) -> Tensor:
    """GroupNorm (+ SiLU) of a 4-D channels_last tensor (+ ``add`` (B, C)) by the Triton kernels, in float32."""
    return launch_group_norm(x, weight, bias, groups, eps, silu, add)


@group_norm_nhwc.register_fake
def _(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    groups: int,
    eps: float,
    silu: bool,
    add: Tensor | None = None,
) -> Tensor:
    return torch.empty_like(x)


def kernels_apply(x: Tensor, groups: int) -> bool:
    """Whether ``group_norm_nhwc`` takes ``x``: a 4-D channels_last CUDA tensor, C divisible by ``groups``."""
    return (
        x.is_cuda
        and x.dim() == 4
        and x.shape[1] % groups == 0
        and x.is_contiguous(memory_format=torch.channels_last)
        and x.numel() > 0
    )
