"""Triton kernels for GroupNorm (optionally followed by SiLU) on channels_last tensors.

A channels_last (B, C, H, W) tensor is stored as (B, H*W, C). The compiler's own GroupNorm reads
it group by group, C/G channels at a time across a 2*C-byte stride; at the SD v1 UNet's shapes it
moved about 2.1 TB/s on an H200, these kernels about 2.4 (benchmarks/RESULTS.md). They read
tiles of whole channel blocks (the jitted code is in :mod:`ldmkit.fast.group_norm_triton`):

1. ``partial_moments``: per (row block, channel block) tile, the per-channel mean and sum of
   squared deviations of its H*W block (two passes over the tile in registers, so a large mean
   does not cost the variance its digits);
2. ``group_scale_shift``: combines the partials of each (batch row, group) with Chan's formula into
   a float32 centre (the group mean) and scale (1/std times the norm's weight) per (B, C);
3. ``scale_shift_apply``: ``y = (x - centre) * scale + bias`` (then ``y * sigmoid(y)`` when asked),
   written in the input's dtype and layout. The centre is subtracted first rather than folded into
   a shift (``x * scale + shift``): on a float32 input with a mean far from zero the fold costs two
   roundings of ``|mean * scale|`` that torch's GroupNorm does not make.

A two-launch form makes 2 and 3 one kernel, ``group_apply``: each program covers whole groups (a
power-of-two channel block, as few lanes idle as can be), combines their partials itself and
applies them to its tile. That saves a launch and its hand-over per norm where the tensors are
small and the kernels short (a batch-2 step: 45 GroupNorms), at the price of every program
re-reading its channels' partials, which is why it only suits few partials (small H*W). It is
taken where the partials number at most ``TWO_KERNEL_MAX_PARTIALS`` (one: the 8x8 latents, where
``benchmarks/gpu_group_norm.py --forms`` timed it faster than three kernels).

An optional per-(B, C) ``add`` (a residual block's timestep embedding) is added to x in float32
inside both passes, so the sum is never rounded to the input's dtype before it is normalised. It
may be a slice of a wider tensor (its rows any distance apart, its channels adjacent), as the
blocks' shared time projection gives it (:mod:`ldmkit.fast.time_projections`).

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
# The two-kernel form's apply tiles hold this many elements (BLOCK_HW x its channel block)
APPLY_TILE = 4096
# The two-kernel form where each apply program would read at most this many partial rows per channel.
# Timed against three kernels on an H100 at SD v1's shapes (benchmarks/RESULTS.md, run X): with one partial
# row (H*W up to 128: the 8x8 latents) it won at all four shapes, by 0.8-1.5 us a norm; with two (16x16) it
# won at batch 2 and lost at batch 16 (19.1 against 15.6 us); with 8 and more it tied or lost
TWO_KERNEL_MAX_PARTIALS = 1


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@functools.cache
def _kernels():  # noqa: ANN202 - the jitted functions have no useful static type
    from ldmkit.fast import group_norm_triton as kernels

    return kernels.partial_moments, kernels.group_scale_shift, kernels.scale_shift_apply, kernels.group_apply


def group_block(channels_per_group: int) -> tuple[int, int] | None:
    """(groups per program, channel block) of the two-kernel form: whole groups in a power-of-two block of
    32 to 128 channels, the fewest lanes left idle; None where one group is wider than 128 channels."""
    best: tuple[float, int, int] | None = None
    for block_c in (32, 64, 128):
        groups = block_c // channels_per_group
        if groups:
            idle = 1 - groups * channels_per_group / block_c
            if best is None or idle < best[0] - 1e-9:
                best = (idle, groups, block_c)
    return None if best is None else (best[1], best[2])


def two_kernels(hw: int, channels: int, groups: int, block_hw: int = BLOCK_HW) -> bool:
    """Whether the moments are applied by one kernel that also combines them (see the module's docstring)."""
    return -(-hw // block_hw) <= TWO_KERNEL_MAX_PARTIALS and group_block(channels // groups) is not None


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
    fused: bool | None = None,
) -> Tensor:
    """The kernels on a 4-D channels_last ``x`` (plus ``add`` (B, C), if given) with the given tile.

    ``fused``: the two-kernel form (True), the three-kernel form (False) or the one ``two_kernels``
    chooses for the shape (None); True where no group fits the two-kernel form's block keeps three.
    """
    partial_moments, group_scale_shift, scale_shift_apply, _ = _kernels()
    batch, channels, height, width = x.shape
    hw = height * width
    n_hw = -(-hw // block_hw)
    n_c = -(-channels // block_c)
    means = torch.empty((batch, n_hw, channels), device=x.device, dtype=torch.float32)
    m2s = torch.empty_like(means)
    tile = dict(BLOCK_HW=block_hw, BLOCK_C=block_c, num_warps=warps)
    if add is not None and add.stride(1) != 1:
        add = add.contiguous()
    add_arg = add if add is not None else x  # a placeholder pointer when there is nothing to add
    has_add = add is not None
    add_stride = add.stride(0) if add is not None else 0  # rows of a slice of a wider tensor are further apart
    partial_moments[(batch * n_hw, n_c)](
        x, add_arg, means, m2s, hw, channels, n_hw, add_stride, HAS_ADD=has_add, **tile
    )
    y = torch.empty_like(x)  # keeps the channels_last strides
    fused = two_kernels(hw, channels, groups, block_hw) if fused is None else fused
    if fused and group_block(channels // groups) is not None:
        _launch_group_apply(x, add_arg, has_add, add_stride, means, m2s, weight, bias, y, groups, eps, silu,
                            block_hw, warps)  # fmt: skip
        return y
    scale = torch.empty((batch, channels), device=x.device, dtype=torch.float32)
    center = torch.empty_like(scale)
    group_scale_shift[(batch * groups,)](
        means,
        m2s,
        weight if weight is not None else scale,  # a placeholder pointer when there is no weight
        scale,
        center,
        hw,
        channels,
        groups,
        n_hw,
        eps,
        HAS_WEIGHT=weight is not None,
        BLOCK_HW=block_hw,
        BLOCK_N=min(64, _next_power_of_2(n_hw)),
        BLOCK_CPG=_next_power_of_2(channels // groups),
    )
    scale_shift_apply[(batch * n_hw, n_c)](
        x, add_arg, scale, center, bias if bias is not None else center, y, hw, channels, n_hw, add_stride,
        HAS_ADD=has_add, HAS_BIAS=bias is not None, SILU=silu, **tile,
    )  # fmt: skip
    return y


def _launch_group_apply(
    x: Tensor,
    add: Tensor,
    has_add: bool,
    add_stride: int,
    means: Tensor,
    m2s: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    y: Tensor,
    groups: int,
    eps: float,
    silu: bool,
    moments_hw: int,
    warps: int,
) -> None:
    """The two-kernel form's second kernel: partials (B, n_hw, C) of ``moments_hw`` rows combined and applied."""
    group_apply = _kernels()[3]
    batch, channels, height, width = x.shape
    hw, cpg = height * width, channels // groups
    blocks = group_block(cpg)
    assert blocks is not None  # the caller checked that whole groups fit a block
    per_block, block_c = blocks
    block_hw = max(16, APPLY_TILE // block_c)
    n_rows = -(-hw // block_hw)
    n_hw = means.shape[1]
    group_apply[(batch * n_rows, -(-groups // per_block))](
        x,
        add,
        means,
        m2s,
        weight if weight is not None else means,  # placeholder pointers where there is no weight or bias
        bias if bias is not None else means,
        y,
        hw,
        channels,
        cpg,
        n_hw,
        n_rows,
        add_stride,
        eps,
        HAS_ADD=has_add,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
        SILU=silu,
        GROUPS_PER_BLOCK=per_block,
        MOMENTS_HW=moments_hw,
        BLOCK_N=min(64, _next_power_of_2(n_hw)),
        BLOCK_HW=block_hw,
        BLOCK_C=block_c,
        num_warps=warps,
    )


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
