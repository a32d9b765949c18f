"""GroupNorm written for channels_last tensors under ``torch.compile``.

The compiler lowers ``F.group_norm`` through a (B, G, C/G * H * W) view of the tensor, an order
that a channels_last tensor does not store. Here the moments are taken per channel along the
(B, H*W, C) view that channels_last stores contiguously, combined per group, and applied as one
per-channel scale and shift, so every pass reads the tensor in memory order. The fast path uses it
in the decoder, where it measured faster on an H200 (benchmarks/RESULTS.md); in the UNet it
measured the same as the compiler's own lowering.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldmkit.fast import group_norm_kernels as kernels
from ldmkit.fast.support import structural_copy, swap_modules, triton_available


def channels_last_moments(x: Tensor, groups: int) -> tuple[Tensor, Tensor]:
    """Float32 mean and variance (B, G) of each group of a channels_last (B, C, H, W) tensor.

    Moments are taken per channel around the channel's first value (a shift that keeps E[d^2] -
    E[d]^2 well conditioned when the mean is large against the spread), then combined per group:
    the group variance is the mean of the channel variances plus the spread of the channel means.
    """
    b, c, h, w = x.shape
    xs = x.permute(0, 2, 3, 1).reshape(b, h * w, c).float()  # (B, HW, C): a view of channels_last memory
    d = xs - xs[:, :1, :]  # (B, HW, C), shifted by each channel's first value
    mean_d = d.mean(dim=1)  # (B, C)
    var_c = ((d * d).mean(dim=1) - mean_d * mean_d).clamp_min(0.0)  # (B, C)
    mean_c = (mean_d + xs[:, 0, :]).view(b, groups, c // groups)  # (B, G, C/G)
    mean_g = mean_c.mean(dim=-1)  # (B, G)
    spread = (mean_c - mean_g[..., None]).square().mean(dim=-1)  # (B, G)
    return mean_g, var_c.view(b, groups, c // groups).mean(dim=-1) + spread


class _GroupNormReplacement(nn.Module):
    """Holds a GroupNorm's settings and shares its ``weight`` and ``bias`` (not copies)."""

    def __init__(self, source: nn.GroupNorm) -> None:
        super().__init__()
        self.num_groups = source.num_groups
        self.num_channels = source.num_channels
        self.eps = source.eps
        self.weight = source.weight
        self.bias = source.bias


class ChannelsLastGroupNorm(_GroupNormReplacement):
    """A GroupNorm that computes in float32 and returns the input's dtype (like the UNet's GroupNorm32).

    Shares ``weight`` and ``bias`` with the GroupNorm it replaces. Inputs that are not 4-D
    channels_last tensors take ``F.group_norm`` (in float32).
    """

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        if x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last):
            return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)
        b, c = x.shape[:2]
        mean, var = channels_last_moments(x, self.num_groups)  # (B, G) each
        per_group = c // self.num_groups
        rstd = torch.rsqrt(var + self.eps).repeat_interleave(per_group, dim=1)  # (B, C)
        scale = rstd if weight is None else rstd * weight  # (B, C)
        shift = -mean.repeat_interleave(per_group, dim=1) * scale  # (B, C)
        if bias is not None:
            shift = shift + bias
        y = x.float() * scale[:, :, None, None] + shift[:, :, None, None]  # (B, C, H, W), channels_last
        return y.type(x.dtype)


class KernelGroupNorm(_GroupNormReplacement):
    """GroupNorm (and the SiLU after it when ``silu``) by the Triton kernels of
    :mod:`ldmkit.fast.group_norm_kernels` on CUDA channels_last inputs; float32 statistics, the
    input's dtype out. Other inputs take the same computation in torch operations. Shares
    ``weight`` and ``bias`` with the GroupNorm it replaces.

    ``forward(x, add=...)`` normalises ``x + add`` for a per-(B, C) ``add`` without rounding the
    sum to x's dtype first; modules that add such a term just before a norm may check ``takes_add``.
    """

    takes_add = True

    def __init__(self, source: nn.GroupNorm, silu: bool = False) -> None:
        super().__init__(source)
        self.silu = silu
        self.triton = triton_available()  # asked once here, not inside compiled code

    def forward(self, x: Tensor, add: Tensor | None = None) -> Tensor:
        if add is not None:
            add = add.reshape(x.shape[0], x.shape[1])  # (B, C): the kernels take rows any distance apart
            if add.stride(1) != 1:
                add = add.contiguous()
        args = (self.weight, self.bias, self.num_groups, self.eps, self.silu, add)
        if self.triton and kernels.kernels_apply(x, self.num_groups):
            return kernels.group_norm_nhwc(x, *args)
        return kernels.group_norm_nhwc_reference(x, *args)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, silu={self.silu}"


def with_channels_last_group_norms(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose GroupNorms are :class:`ChannelsLastGroupNorm` (weights shared, not copied)."""
    return swap_modules(module, lambda m: isinstance(m, nn.GroupNorm), ChannelsLastGroupNorm)


def with_kernel_group_norms(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose GroupNorms followed by a SiLU are :class:`KernelGroupNorm` (weights shared).

    Swapped are GroupNorms directly followed by ``nn.SiLU`` in an ``nn.Sequential`` (a residual
    block's norms): the kernel takes the activation in and the SiLU becomes an ``nn.Identity``,
    unless the module that owns the Sequential sets ``fuse_norm_activation = False`` (one that calls
    the norm on its own, with work between the two). Other GroupNorms keep the compiler's: alone
    the kernels were no faster there, and behind the op boundary the compiler can no longer keep
    the residual sum that feeds such a norm (a spatial transformer's) in float32, which cost the
    bf16 UNet most of the kernels' precision (benchmarks/RESULTS.md).
    """
    module = structural_copy(module)
    if isinstance(module, nn.Sequential):  # a Sequential at the top has no owner to ask
        _swap_in_sequential(module, fuse=True)
    for owner in list(module.modules()):
        fuse = getattr(owner, "fuse_norm_activation", True)
        for child in owner.children():
            if isinstance(child, nn.Sequential):
                _swap_in_sequential(child, fuse=fuse)
    return module


def _swap_in_sequential(seq: nn.Sequential, fuse: bool) -> None:
    layers = list(seq)
    for i, layer in enumerate(layers[:-1]):
        if isinstance(layer, nn.GroupNorm) and type(layers[i + 1]) is nn.SiLU:
            seq[i] = KernelGroupNorm(layer, silu=fuse)
            if fuse:
                seq[i + 1] = nn.Identity()
