"""The fast path's fp8 linear layers: float8 (e4m3) weights and activations, row-wise scaled.

On GPUs with fp8 tensor cores (compute capability 8.9 and later: Ada, Hopper) a float8 matrix
product runs at about twice the bf16 rate. :class:`Fp8Linear` quantizes its weight once, with one
float32 scale per output channel, and each input row on the fly with one scale per row, then lets
``torch._scaled_mm`` multiply and apply both scales (and the bias) in one kernel. Elsewhere, or for
widths that kernel does not take, the same quantized values are dequantized and multiplied in
float32 (the reference path: slow, but it computes what the kernel computes, so CPU tests check the
quantization itself).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ldmkit.fast.support import swap_modules

__all__ = [
    "FP8_DTYPE",
    "FP8_MAX",
    "MIN_FEATURES",
    "Fp8Linear",
    "dequantize_rows",
    "fp8_linear_supported",
    "quantize_rows",
    "scaled_mm_rows",
    "with_fp8_linears",
]

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448: e4m3fn has no infinities, so its range ends here
ALIGN = 16  # torch._scaled_mm needs K and N to be multiples of 16
MIN_FEATURES = 64  # narrower inputs are left alone (see with_fp8_linears)
# Smallest row scale: an all-zero row divides by it instead of by 0 and quantizes to exact zeros.
_MIN_SCALE = 1e-12
# torch._scaled_mm's row-wise kernels write bf16 (some builds also fp16): fp16 layers compute in bf16
# and cast, the extra rounding (2^-9) far below fp8's own (2^-4).
_KERNEL_DTYPE = torch.bfloat16


def quantize_rows(t: Tensor) -> tuple[Tensor, Tensor]:
    """t (R, K) -> (t / scale as float8_e4m3fn (R, K), scale (R, 1) float32), scale = amax(|row|) / 448.

    Each row's largest magnitude maps to 448, e4m3fn's largest value. A zero row gets the smallest
    scale and quantizes to zeros (never 0/0).
    """
    t32 = t.float()
    scale = (t32.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp_min(_MIN_SCALE)  # (R, 1)
    # the clamp only catches float32 rounding of amax / scale just above 448, which must not overflow
    q = (t32 / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)  # (R, K)
    return q, scale


def dequantize_rows(q: Tensor, scale: Tensor) -> Tensor:
    """q (R, K) float8, scale (R, 1) -> (R, K) float32."""
    return _fp8_to_float(q) * scale


def _fp8_to_float(q: Tensor) -> Tensor:
    """float8_e4m3fn -> float32, exactly as ``q.float()``."""
    if q.device.type != "cpu":
        return q.float()
    # torch's CPU conversion from float8 runs element by element (about 30 ns each); looking the 256
    # possible values up in a table is about 20 times faster, which the CPU reference path needs
    return _cpu_fp8_values()[q.view(torch.uint8).int()]


@functools.cache
def _cpu_fp8_values() -> Tensor:
    return torch.arange(256, dtype=torch.uint8).view(FP8_DTYPE).float()  # (256,): value of each bit pattern


def scaled_mm_rows(
    x_fp8: Tensor,
    scale_x: Tensor,
    weight_fp8: Tensor,
    weight_scale: Tensor,
    bias: Tensor | None,
    out_dtype: torch.dtype,
) -> Tensor:
    """(x_fp8 * scale_x) @ (weight_fp8 * weight_scale.T).T + bias by ``torch._scaled_mm``, as ``out_dtype``.

    x_fp8 (M, K) row-major, scale_x (M, 1), weight_fp8 (N, K) row-major (so ``.t()`` is the column-major
    (K, N) operand the kernel wants), weight_scale (1, N), bias (N,); scales float32; K, N multiples of 16.
    """
    kernel_bias = None if bias is None else bias.to(_KERNEL_DTYPE)
    out = torch._scaled_mm(
        x_fp8, weight_fp8.t(), scale_a=scale_x, scale_b=weight_scale, bias=kernel_bias, out_dtype=_KERNEL_DTYPE
    )  # (M, N)
    return out.to(out_dtype)


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def fp8_linear_supported(device: torch.device) -> bool:
    """Whether ``device`` multiplies float8 matrices in hardware: a CUDA device of compute capability 8.9 or later."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _capability(index) >= (8, 9)


class Fp8Linear(nn.Module):
    """An ``nn.Linear`` with float8 (e4m3) weights and activations, each scaled per row, for inference.

    The weight is quantized once, at build, with a float32 scale per output channel; the bias stays
    in the layer's dtype. Each call quantizes the input per row (one scale per token), multiplies
    by ``torch._scaled_mm`` on GPUs that have fp8 matmuls (:func:`fp8_linear_supported`), and
    returns the result in the input's dtype (bf16 or fp16). Elsewhere, for other input dtypes, or
    for widths that are not multiples of 16, it dequantizes and multiplies in float32.
    """

    weight_fp8: Tensor  # buffers
    weight_scale: Tensor
    bias: Tensor | None

    def __init__(self, source: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = source.in_features, source.out_features
        weight_fp8, scale = quantize_rows(source.weight.detach())  # (N, K), (N, 1)
        self.register_buffer("weight_fp8", weight_fp8)  # (N, K) float8_e4m3fn
        self.register_buffer("weight_scale", scale.reshape(1, -1).contiguous())  # (1, N) float32
        bias = None if source.bias is None else source.bias.detach().clone()
        self.register_buffer("bias", bias)  # (N,) in the layer's dtype, or None
        aligned = self.in_features % ALIGN == 0 and self.out_features % ALIGN == 0
        # asked once, not inside compiled code
        self.supported = aligned and fp8_linear_supported(source.weight.device)

    def forward(self, x: Tensor) -> Tensor:
        """x (..., K) -> (..., N)."""
        lead = x.shape[:-1]
        x_fp8, scale_x = quantize_rows(x.reshape(-1, self.in_features))  # (M, K), (M, 1)
        if self.supported and x.is_cuda and x.dtype in (torch.bfloat16, torch.float16):
            # the kernel wants a row-major x; the quantized copy of a strided view may not be
            out = scaled_mm_rows(x_fp8.contiguous(), scale_x, self.weight_fp8, self.weight_scale, self.bias, x.dtype)
        else:
            out = self.reference(x_fp8, scale_x).to(x.dtype)
        return out.reshape(*lead, self.out_features)

    def reference(self, x_fp8: Tensor, scale_x: Tensor) -> Tensor:
        """What the kernel computes, in float32: x_fp8 (M, K), scale_x (M, 1) -> (M, N)."""
        weight = dequantize_rows(self.weight_fp8, self.weight_scale.reshape(-1, 1))  # (N, K)
        out = dequantize_rows(x_fp8, scale_x) @ weight.t()  # (M, N)
        return out if self.bias is None else out + self.bias.float()

    def dequantized_weight(self) -> Tensor:
        """The weight this layer multiplies by, (N, K) float32 (for checks; the layer never holds it)."""
        return dequantize_rows(self.weight_fp8, self.weight_scale.reshape(-1, 1))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"fp8 matmul: {self.supported}"
        )


def _fp8_candidate(module: nn.Module) -> bool:
    """An exact nn.Linear (not a subclass) without hooks, both widths multiples of 16, at least 64 inputs wide."""
    if type(module) is not nn.Linear:
        return False
    if module._forward_hooks or module._forward_pre_hooks:
        return False
    k, n = module.in_features, module.out_features
    return k % ALIGN == 0 and n % ALIGN == 0 and k >= MIN_FEATURES


def with_fp8_linears(module: nn.Module, *, predicate: Callable[[nn.Linear], bool] | None = None) -> nn.Module:
    """A structural copy of ``module`` whose eligible ``nn.Linear`` layers are :class:`Fp8Linear`.

    Eligible: exactly ``nn.Linear`` (a subclass may compute something else), with no forward hooks
    (unmerged LoRA updates run in one and need the float weight), whose in and out features are
    multiples of 16 (what ``torch._scaled_mm`` takes) and whose in features are at least 64; and
    for which ``predicate`` holds, when given. Narrower layers gain nothing from fp8 and would
    only round more (the timestep embedding of small models, say); everything else is left as it is.

    Modules that the fast path swapped before are not linears any more: a GEGLU computed by the
    fused GEGLU kernel (:mod:`ldmkit.fast.geglu`) keeps the kernel, in bf16 or fp16. A module
    that reads a linear layer's ``weight`` instead of calling it cannot run on the copy.

    ``module`` keeps its own layers; the copy shares every other parameter and buffer with it.
    """

    def wanted(m: nn.Module) -> bool:
        return isinstance(m, nn.Linear) and _fp8_candidate(m) and (predicate is None or predicate(m))

    return swap_modules(module, wanted, Fp8Linear)
