"""The fast path's attention kernel choice: FlashAttention-3 or -4 forward kernels, swapped into a denoiser.

PyTorch's SDPA (cuDNN on Hopper) runs SD v1's 40-wide heads with a 64-wide tile and computes the
softmax between the two products; FlashAttention-3 overlaps them (one warpgroup's softmax with
another's products). It comes from the optional ``fa3-fwd`` package (``pip install ldmkit[hopper]``:
a prebuilt bf16 forward-only build against torch's stable C ABI), so CI and other GPUs keep SDPA.
FlashAttention-4 (``pip install 'ldmkit[fa4]'``, NVIDIA's CuTe DSL; each kernel compiled at its
first call) rounds 40-wide heads up to 48 columns instead of 64: on an H100 it took 2.6% off a
batch-16 SD v1 step against FlashAttention-3, so the fast path prefers it where it is installed
(benchmarks/RESULTS.md, run T).

A denoiser meets it by declaring ``computes_attention = True`` on its attention modules: modules
with ``to_q``, ``to_k``, ``to_v`` (bias-free ``nn.Linear``), ``to_out`` (applied to the heads'
concatenated outputs), ``heads`` and ``scale``, whose forward is ``forward(x, context=None)`` with
softmax attention of queries from ``x`` over keys and values from ``context`` (or ``x``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldmkit.fast.support import swap_modules

__all__ = [
    "ATTENTION_KERNELS",
    "FA4_HOPPER_TILES",
    "Fa4Tile",
    "FlashAttention",
    "fa3_available",
    "fa3_unusable_reason",
    "fa4_available",
    "fused_projection",
    "kernel_unusable_reason",
    "with_flash_attention",
]

log = logging.getLogger(__name__)

ATTENTION_KERNELS = ("sdpa", "fa3", "fa4")
FA3_PACKAGE = "fa3-fwd"
FA4_PACKAGE = "flash-attn-4"
FA3_MAX_HEAD_DIM = 256
# Fewer keys than this stay on SDPA: on an H100, SD v1's 77-key cross-attention took 96 us with
# FlashAttention-3 against 73 with cuDNN's SDPA; at 256 keys and more FlashAttention-3 was faster
# (21.9 against 24.4 us at 16x16; benchmarks/RESULTS.md, run R).
FA3_MIN_KEYS = 128

# FlashAttention-4's Hopper forward tile: (tile_m, tile_n, P kept in registers for the second product,
# intra-warpgroup overlap of softmax and products)
Fa4Tile = tuple[int, int, bool, bool]
# Head width -> the tile timed faster than FlashAttention-4's own choice on an H100 at SD v1's shapes
# (benchmarks/gpu_fa4_tiles.py); widths not listed keep the package's choice (192x128 up to 64 columns).
FA4_HOPPER_TILES: dict[int, Fa4Tile] = {}


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


@functools.cache
def fa4_available() -> bool:
    """Whether FlashAttention-4's CuTe DSL interface (``flash_attn.cute``) imports."""
    try:
        _fa4_function()
    except Exception as exc:  # noqa: BLE001  (ImportError, or a DSL library that does not load here)
        log.debug("flash_attn.cute not usable: %s", exc)
        return False
    return True


def kernel_unusable_reason(kernel: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why attention kernel ``kernel`` ("fa3" or "fa4") cannot run on ``device`` in ``dtype``; None if it can."""
    if kernel == "fa3":
        return fa3_unusable_reason(device, dtype)
    if not fa4_available():
        return f"the {FA4_PACKAGE} package is not installed (pip install 'ldmkit[fa4]')"
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"it runs on CUDA devices only, not {device}"
    index = device.index if device.index is not None else torch.cuda.current_device()
    if torch.cuda.get_device_capability(index)[0] not in (9, 10):
        return f"its kernels are for Hopper and Blackwell GPUs; {torch.cuda.get_device_name(index)} is not one"
    if dtype not in (torch.bfloat16, torch.float16):
        return f"it computes in bf16 or fp16, not {str(dtype).removeprefix('torch.')}"
    return None


def _fa4_function() -> Any:
    """FlashAttention-4's ``flash_attn_func`` (imported on first use: the DSL's compiler is large)."""
    return importlib.import_module("flash_attn.cute").flash_attn_func


_TILE_ARGUMENTS = ("tile_mn", "mma_pv_is_rs", "intra_wg_overlap")


@functools.cache
def _fa4_tiled_function() -> Any | None:
    """The package's forward with tile arguments (``flash_attn.cute.interface._flash_attn_fwd``, not in its
    public ``flash_attn_func``), or None where this release has no such function: its own tiles then."""
    function = getattr(importlib.import_module("flash_attn.cute.interface"), "_flash_attn_fwd", None)
    if function is None or not set(_TILE_ARGUMENTS) <= set(inspect.signature(function).parameters):
        log.warning("this flash-attn-4 release takes no tile arguments; FlashAttention-4 keeps its own tiles")
        return None
    return function


def _takes_tiles(device: torch.device) -> bool:
    """Whether FlashAttention-4 runs its Hopper (SM90) forward on ``device``, the one the tiles are for."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9


# (head width, dtype) whose FlashAttention-4 kernel failed to compile or run here: SDPA from then on
_FA4_FAILED: set[tuple[int, torch.dtype]] = set()
# (head width, dtype, tile) whose tile failed here: FlashAttention-4's own tile from then on
_FA4_TILE_FAILED: set[tuple[int, torch.dtype, tuple[int, ...]]] = set()


@torch.library.custom_op("ldmkit::flash_attention_4", mutates_args=())
def flash_attention_4(q: Tensor, k: Tensor, v: Tensor, scale: float, tile: list[int] | None = None) -> Tensor:
    """(B, N, heads, d), (B, L, heads, d) x2 -> (B, N, heads, d) by FlashAttention-4's forward kernel.

    An operator of its own so that ``torch.compile`` traces around the kernel (the package registers
    none) and calls it as one opaque step. The package compiles each kernel at its first call, so the
    fast path's warm-up calls, before CUDA-graph capture, are where that time goes. ``tile``
    ([tile_m, tile_n, P in registers, overlap], see :data:`FA4_HOPPER_TILES`) replaces the package's
    own tile on Hopper GPUs. A kernel the package cannot build or run for these inputs (a beta
    package, chosen by default where it is installed) is logged once as a warning and computed from
    then on by the package's own tile (a tile that failed) or by SDPA: the same function, so the
    pictures do not change, only the speed.
    """
    key = (q.shape[-1], q.dtype)
    if tile and (*key, tuple(tile)) not in _FA4_TILE_FAILED and _takes_tiles(q.device):
        tiled = _fa4_tiled_function()
        if tiled is not None:
            m, n, registers, overlap = tile
            try:
                out = tiled(q, k, v, softmax_scale=scale, causal=False, tile_mn=(m, n),
                            mma_pv_is_rs=bool(registers), intra_wg_overlap=bool(overlap))  # fmt: skip
                return (out[0] if isinstance(out, tuple) else out).contiguous()  # (out, lse)
            except Exception as exc:  # noqa: BLE001  (the DSL's compiler raises its own error types)
                _FA4_TILE_FAILED.add((*key, tuple(tile)))
                log.warning(
                    "FlashAttention-4's %dx%d tile failed for head width %d (%s: %s); its own tile from now on",
                    m, n, key[0], type(exc).__name__, exc,
                )  # fmt: skip
    if key not in _FA4_FAILED:
        try:
            out = _fa4_function()(q, k, v, softmax_scale=scale, causal=False)
            return (out[0] if isinstance(out, tuple) else out).contiguous()  # (out, lse) in its releases so far
        except Exception as exc:  # noqa: BLE001  (the DSL's compiler raises its own error types)
            _FA4_FAILED.add(key)
            log.warning(
                "FlashAttention-4 failed for head width %d in %s (%s: %s); SDPA computes it instead",
                key[0], str(key[1]).removeprefix("torch."), type(exc).__name__, exc,
            )  # fmt: skip
    return sdpa_heads_last(q, k, v, scale).contiguous()  # (B, N, heads, d)


@flash_attention_4.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, scale: float, tile: list[int] | None = None) -> Tensor:
    return q.new_empty((*q.shape[:-1], v.shape[-1]))  # (B, N, heads, d_v)


def kernel_applies(q: Tensor, k: Tensor, kernel: str = "fa3") -> bool:
    """Whether ``kernel`` takes these (B, N, heads, d) inputs and pays (else the module runs SDPA)."""
    dtypes = (torch.bfloat16,) if kernel == "fa3" else (torch.bfloat16, torch.float16)
    return q.is_cuda and q.dtype in dtypes and kernel_suits_shape(q.shape[-1], k.shape[-1], k.shape[1])


def kernel_suits_shape(head_dim: int, key_head_dim: int, keys: int) -> bool:
    """Whether FlashAttention-3 takes this head width and was measured faster than SDPA at this many keys.

    FlashAttention-4 is held to the same limits: it takes head widths up to 256 as well, and it was
    slower than SDPA over the 77-key cross-attention too (112.5 against 73.0 us, run U)."""
    fits = head_dim % 8 == 0 and head_dim <= FA3_MAX_HEAD_DIM and key_head_dim == head_dim
    return fits and keys >= FA3_MIN_KEYS


def fused_projection(*projections: nn.Module) -> nn.Linear | None:
    """One linear layer whose output is the given projections' outputs side by side ([q | k | v] of
    self-attention, [k | v] of cross-attention), or None where they are not plain linear layers of one shape.

    Its weight is a copy (the weights concatenated along the output), made once: the layers'
    later changes do not reach it. One product reads its input once instead of once a layer,
    which is most of a 320-wide projection's time at 64x64 latents (it is bound by memory).
    """
    layers = [m for m in projections if type(m) is nn.Linear]
    if len(layers) != len(projections) or not layers:
        return None
    shapes = {(ly.in_features, ly.out_features, ly.bias is None, ly.weight.dtype, ly.weight.device) for ly in layers}
    if len(shapes) != 1:
        return None
    in_features, out_features, no_bias, dtype, device = shapes.pop()
    weights: list[Tensor] = [ly.weight for ly in layers]
    biases: list[Tensor] = [ly.bias for ly in layers if ly.bias is not None]
    width = len(layers) * out_features
    fused = nn.utils.skip_init(nn.Linear, in_features, width, bias=not no_bias, device=device, dtype=dtype)
    with torch.no_grad():
        fused.weight.copy_(torch.cat(weights))  # (layers * out, in)
        if fused.bias is not None:
            fused.bias.copy_(torch.cat(biases))
    return fused.requires_grad_(False)


class FlashAttention(nn.Module):
    """An attention module (see the module docstring) computed by FlashAttention-3 or -4 where it applies.

    The projections are the source module's own (shared, not copied). The kernel reads q, k, v in
    (B, N, heads, d), the layout the projections produce, so no transposes are needed around it.
    With ``fuse_qkv`` self-attention computes q, k and v by one product, cross-attention k and v
    by one (:func:`fused_projection`), and the kernels read them as strided views of its output.
    ``tiles`` (head width -> :data:`Fa4Tile`) replaces FlashAttention-4's own tile at those widths.
    """

    to_q: nn.Module
    to_k: nn.Module
    to_v: nn.Module
    to_out: nn.Module

    def __init__(
        self, source: Any, kernel: str = "fa3", fuse_qkv: bool = False, tiles: Mapping[int, Fa4Tile] | None = None
    ) -> None:
        super().__init__()
        if kernel not in ("fa3", "fa4"):
            raise ValueError(f"kernel must be 'fa3' or 'fa4', got {kernel!r}")
        self.kernel = kernel
        self.tiles: dict[int, list[int]] = {w: [m, n, int(r), int(o)] for w, (m, n, r, o) in (tiles or {}).items()}
        for name in ("to_q", "to_k", "to_v", "to_out"):
            if not isinstance(getattr(source, name, None), nn.Module):
                raise ValueError(f"{type(source).__name__} declares computes_attention but has no {name} module")
        self.to_q, self.to_k, self.to_v, self.to_out = source.to_q, source.to_k, source.to_v, source.to_out
        self.to_qkv = fused_projection(self.to_q, self.to_k, self.to_v) if fuse_qkv else None
        # a column slice of a product shared across modules after with_shared_context_projections
        self.to_kv: nn.Module | None = fused_projection(self.to_k, self.to_v) if fuse_qkv else None
        self.heads: int = int(source.heads)
        self.scale: float = float(source.scale)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """x (B, N, query_dim), context (B, L, context_dim) or None (self-attention) -> (B, N, query_dim)."""
        b, n, _ = x.shape
        if context is None and self.to_qkv is not None:
            qkv = self.to_qkv(x).unflatten(-1, (3, self.heads, -1))  # (B, N, 3, heads, d)
            q, k, v = qkv.unbind(2)  # each (B, N, heads, d), strided views
        elif context is not None and self.to_kv is not None:
            q = self.to_q(x).unflatten(-1, (self.heads, -1))  # (B, N, heads, d)
            k, v = self.to_kv(context).unflatten(-1, (2, self.heads, -1)).unbind(2)  # (B, L, heads, d) each
        else:
            context = x if context is None else context
            q = self.to_q(x).unflatten(-1, (self.heads, -1))  # (B, N, heads, d)
            k = self.to_k(context).unflatten(-1, (self.heads, -1))  # (B, L, heads, d)
            v = self.to_v(context).unflatten(-1, (self.heads, -1))  # (B, L, heads, d)
        if not kernel_applies(q, k, self.kernel):
            out = sdpa_heads_last(q, k, v, self.scale)
        elif self.kernel == "fa4":
            out = flash_attention_4(q, k, v, self.scale, self.tiles.get(q.shape[-1]))  # (B, N, heads, d)
        else:
            out = torch.ops.fa3_fwd._flash_attn_forward(q, k, v, softmax_scale=self.scale)[0]  # (B, N, heads, d)
        return self.to_out(out.reshape(b, n, -1))  # (B, N, query_dim)

    def extra_repr(self) -> str:
        name = {"fa3": "FlashAttention-3", "fa4": "FlashAttention-4"}[self.kernel]
        fused = ", q/k/v (k/v of a context) by one product" if self.to_kv is not None else ""
        tiles = "".join(f", {m}x{n} tiles at width {w}" for w, (m, n, _, _) in self.tiles.items())
        return f"heads={self.heads}, {name} at {FA3_MIN_KEYS} keys or more where it applies, else SDPA{fused}{tiles}"


def sdpa_heads_last(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Softmax attention of (B, N, heads, d) inputs by SDPA -> (B, N, heads, d)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
    return out.transpose(1, 2)  # (B, N, heads, d)


def with_flash_attention(
    module: nn.Module, kernel: str = "fa3", fuse_qkv: bool = False, tiles: Mapping[int, Fa4Tile] | None = None
) -> nn.Module:
    """A copy of ``module`` whose ``computes_attention`` modules are :class:`FlashAttention` on ``kernel``
    ("fa3" or "fa4"; weights shared, but for the fused q/k/v copies that ``fuse_qkv`` makes), FlashAttention-4
    with ``tiles`` (head width -> :data:`Fa4Tile`) where given."""
    swap = functools.partial(FlashAttention, kernel=kernel, fuse_qkv=fuse_qkv, tiles=tiles)
    return swap_modules(module, _declares_attention, swap)


def _declares_attention(module: Any) -> bool:
    return bool(getattr(module, "computes_attention", False))
