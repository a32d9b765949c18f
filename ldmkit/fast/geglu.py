"""The fast path's GEGLU: the fused Hopper kernel of :mod:`ldmkit.fast.geglu_kernels` swapped into a denoiser.

A denoiser meets it by declaring ``computes_geglu = True`` on its GEGLU modules: a module with a
``proj`` (``nn.Linear`` of 2N outputs) whose forward is ``value * gelu(gate)`` with ``[value,
gate] = proj(x).chunk(2, -1)`` and the exact (erf) GELU.
"""

from __future__ import annotations

import functools

from torch import Tensor, nn

from ldmkit.fast import geglu_kernels as kernels
from ldmkit.fast.support import hopper_with_triton, swap_modules


class KernelGEGLU(nn.Module):
    """GEGLU by the fused kernel on Hopper GPUs, with weights interleaved once (a copy of ``proj``'s).

    Off Hopper, or for inputs the kernel does not take, the same computation runs in torch
    operations on the interleaved weights.
    """

    weight_i: Tensor  # buffers
    bias_i: Tensor

    def __init__(self, source: nn.Module, approximate: bool = False) -> None:
        super().__init__()
        self.approximate = approximate  # the tanh form of GELU (``FastConfig.approximate_gelu``)
        proj = source.proj
        if not isinstance(proj, nn.Linear) or proj.bias is None or proj.out_features % 2:
            raise ValueError(f"{type(source).__name__}.proj must be an nn.Linear with a bias and an even output width")
        weight_i, bias_i = kernels.interleave_geglu_weight(proj.weight.detach(), proj.bias.detach())
        self.register_buffer("weight_i", weight_i)  # (2N, K): row 2i value i, row 2i + 1 gate i
        self.register_buffer("bias_i", bias_i)  # (2N,)
        self.supported = hopper_with_triton(proj.weight.device)  # asked once, not inside compiled code

    def forward(self, x: Tensor) -> Tensor:
        """x (..., K) -> (..., N)."""
        if self.supported and kernels.kernel_applies(x, self.weight_i):
            return kernels.geglu_interleaved(x, self.weight_i, self.bias_i, self.approximate)
        return kernels.geglu_interleaved_reference(x, self.weight_i, self.bias_i, self.approximate)

    def extra_repr(self) -> str:
        n2, k = self.weight_i.shape
        gelu = ", GELU in its tanh form" if self.approximate else ""
        return f"{k} -> {n2 // 2}, fused kernel: {self.supported}{gelu}"


def with_kernel_geglu(module: nn.Module, approximate: bool = False) -> nn.Module:
    """A copy of ``module`` whose ``computes_geglu`` modules are :class:`KernelGEGLU` (``approximate``:
    gated by the tanh form of GELU).

    Other parameters are shared with ``module``, not copied; each GEGLU's projection is held once
    more, interleaved (for the SD v1 UNet about 200 MB in bf16).
    """
    swap = functools.partial(KernelGEGLU, approximate=approximate)
    return swap_modules(module, lambda m: getattr(m, "computes_geglu", False), swap)
