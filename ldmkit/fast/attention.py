"""The fast path's self-attention: the padded Hopper kernel of :mod:`ldmkit.fast.attention_kernels` swapped in.

A denoiser meets it by declaring ``computes_attention = True`` on its attention modules: a module
with ``heads``, ``scale``, ``to_q``, ``to_k`` and ``to_v`` (``nn.Linear`` without bias, of equal
shapes), ``to_out[0]`` (an ``nn.Linear``) and ``forward(x, context=None)`` computing per head
``softmax(q @ k.T * scale) @ v`` with q from ``x`` and k, v from ``context`` (``x`` when None),
then ``to_out``. Only self-attention (no context) takes the kernel; calls with a context run the
module's own code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ldmkit.fast import attention_kernels as kernels
from ldmkit.fast.support import hopper_with_triton, swap_declared

HALF = (torch.bfloat16, torch.float16)


def _checked_output(source: nn.Module) -> nn.Linear:
    """The output projection of a module that declares ``computes_attention``; ValueError if it breaks the promise."""
    projections = [getattr(source, name, None) for name in ("to_q", "to_k", "to_v")]
    if not all(isinstance(p, nn.Linear) and p.bias is None for p in projections):
        raise ValueError(f"{type(source).__name__}: to_q, to_k and to_v must be nn.Linear without bias")
    if source.to_k.weight.shape != source.to_v.weight.shape or source.to_q.out_features % source.heads:
        raise ValueError(f"{type(source).__name__}: to_k and to_v differ, or {source.heads} heads do not divide to_q")
    out = source.to_out[0] if isinstance(source.to_out, nn.Sequential) else source.to_out
    if not isinstance(out, nn.Linear) or out.in_features != source.to_q.out_features:
        raise ValueError(f"{type(source).__name__}.to_out[0] must be an nn.Linear from the heads' width")
    return out


def can_self_attend(source: nn.Module) -> bool:
    """Whether a declared attention module takes its keys from its input (k and v project what q does)."""
    _checked_output(source)
    return source.to_k.weight.shape == source.to_q.weight.shape


class KernelSelfAttention(nn.Module):
    """Self-attention by the padded kernel on Hopper GPUs, with projection weights packed once.

    In bf16 or fp16 the q, k, v projection runs in float16 (the kernel's operands, more precise
    than bf16; activations past float16's range, 65504, would overflow), and the output keeps the
    input's dtype. Off Hopper, or for token counts the kernel does not take, the same padded
    computation runs in torch operations. Inference only: the output projection's dropout is not
    applied.
    """

    def __init__(self, source: nn.Module) -> None:
        super().__init__()
        out = _checked_output(source)
        if not can_self_attend(source):
            raise ValueError(f"{type(source).__name__}: keys of another width than the queries; no self-attention")
        self.source = source  # computes the calls with a context
        self.heads = int(source.heads)
        self.head_dim = source.to_q.out_features // self.heads
        self.scale = float(source.scale)
        dtype = source.to_q.weight.dtype
        self.qkv_dtype = torch.float16 if dtype in HALF else dtype
        with torch.no_grad():
            weights = (source.to_q.weight, source.to_k.weight, source.to_v.weight, out.weight)
            w_qkv, b_qkv, w_out = kernels.pack_self_attention(*(w.float() for w in weights), self.heads)
        self.register_buffer("w_qkv", w_qkv.to(self.qkv_dtype))  # (3*H*DP, C)
        self.register_buffer("b_qkv", b_qkv.to(self.qkv_dtype))  # (3*H*DP,)
        self.register_buffer("w_out", w_out.to(dtype))  # (C', H*DP)
        self.out_bias = out.bias  # shared with the source
        self.supported = hopper_with_triton(source.to_q.weight.device)  # asked once, not inside compiled code

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """x (B, N, C) -> (B, N, C'); with a context, the source module's own computation."""
        if context is not None:
            return self.source(x, context)
        qkv = nn.functional.linear(x.to(self.qkv_dtype), self.w_qkv, self.b_qkv)  # (B, N, 3*H*DP)
        if self.supported and kernels.kernel_applies(qkv):
            out = kernels.padded_self_attention(qkv, self.heads, self.head_dim, self.scale, x.dtype)
        else:
            out = kernels.padded_attention_reference(qkv, self.heads, self.head_dim, self.scale, x.dtype)
        return nn.functional.linear(out, self.w_out, self.out_bias)  # (B, N, C')

    def extra_repr(self) -> str:
        return f"heads={self.heads}, head_dim={self.head_dim}, fused kernel: {self.supported}"


def with_kernel_attention(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose ``computes_attention`` modules are :class:`KernelSelfAttention`.

    Modules whose keys come from a context of another width than the queries are left as they
    are. Other parameters are shared with ``module``, not copied; each swapped attention holds its
    projections once more, packed and padded.
    """
    return swap_declared(module, "computes_attention", _swap)


def _swap(source: nn.Module) -> nn.Module:
    # cross-attention over a context of another width (SD's attn2) keeps its own module
    return KernelSelfAttention(source) if can_self_attend(source) else source
