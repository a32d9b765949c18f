"""Settings of the fast inference path, and how "auto" settings resolve on a device."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ldmkit.errors import InputError
from ldmkit.fast.attention import ATTENTION_KERNELS

__all__ = ["COMPILE_MODES", "DTYPES", "FastConfig", "Precision", "Resolved", "fast_config"]

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "fp16"]
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune")
# torch.compile modes that already capture CUDA graphs of their own
_MODES_WITH_GRAPHS = ("reduce-overhead", "max-autotune")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class FastConfig:
    """What :func:`ldmkit.fast.optimize` asks for; ``None`` means "decide by device".

    On a CUDA device ``None`` turns everything on (bf16, channels_last, compile, CUDA graphs); on any
    other device it turns everything off (float32, no compile), so the fast path computes exactly
    what the plain pipeline computes unless asked otherwise.

    ``norm_kernels`` computes the denoiser's GroupNorms that are followed by a SiLU, with the
    SiLU, by Triton kernels written for channels_last tensors (:mod:`ldmkit.fast.group_norm_kernels`).
    ``None`` turns them on where they were measured: a Hopper GPU with Triton, in bf16 or fp16;
    ``True`` elsewhere needs Triton. On an H100 they made a batch-16 guided SD v1 step 1.4% faster
    (31.75 against 32.20 ms), within the fast path's precision line: no further from float32 than
    diffusers' compiled bf16 on the same weights plus 10% (benchmarks/RESULTS.md).

    ``geglu_kernel`` computes the denoiser's GEGLU projections (modules that declare
    ``computes_geglu``) by one fused Triton kernel (:mod:`ldmkit.fast.geglu_kernels`). ``None``
    turns it on where it runs: a Hopper GPU with Triton, in bf16 or fp16. On an H200 it was 9-17%
    faster than cuBLAS plus the compiler's gate at the SD v1 UNet's shapes, and closer to float32;
    a batch-16 guided SD v1 step took 0.6% less time with it (benchmarks/RESULTS.md).

    ``attention_kernel``: "sdpa" (PyTorch's scaled_dot_product_attention), "fa3" or "fa4". "fa3":
    FlashAttention-3's Hopper forward kernel for the denoiser's attention modules (those that
    declare ``computes_attention``; :mod:`ldmkit.fast.attention`), over 128 keys or more: shorter
    key sequences (the 77-token text cross-attention) keep SDPA, measured faster there. It needs the
    optional ``fa3-fwd`` package (``pip install 'ldmkit[hopper]'``), a Hopper GPU and precision bf16;
    on an H100 it made a batch-16 guided SD v1 step 1.9% faster than SDPA (31.47 against 32.08 ms),
    slightly closer to float32 (benchmarks/RESULTS.md). "fa4": FlashAttention-4's forward kernel
    over the same modules and keys (``pip install 'ldmkit[fa4]'``; Hopper or Blackwell GPUs, bf16 or
    fp16), which computes 40-wide heads as 48 columns instead of 64: on an H100 its 64x64-latent
    self-attention took 968 us against SDPA's 1151 us at batch 16, and a batch-16 guided SD v1 step
    2.6% less time than with "fa3" (30.27 against 31.07 ms). ``None`` takes the fastest measured
    kernel that runs here: "fa4", else "fa3", else "sdpa". Asking for "fa3" or "fa4" where it cannot
    run raises :class:`InputError` naming what is missing.

    ``attention_tiles`` runs FlashAttention-4 on Hopper GPUs with the tile measured fastest for each
    head width at SD v1's shapes (:data:`ldmkit.fast.attention.FA4_HOPPER_TILES`) instead of the
    package's own choice, which is tuned for 64-wide heads; widths not in that table keep the
    package's tile (the table holds only tiles timed faster, by ``benchmarks/gpu_fa4_tiles.py``:
    none yet). ``None`` turns it on wherever "fa4" runs; ``True`` needs "fa4" (``InputError``
    otherwise).

    ``fuse_qkv`` computes q, k and v of each self-attention (k and v of each cross-attention) by one
    matrix product over weights concatenated when the fast path is built
    (:func:`ldmkit.fast.attention.fused_projection`), so the input is read once; the attention
    kernel reads them as views. ``None`` turns it on with "fa3" and "fa4" (SDPA wants each of q, k,
    v contiguous, and was measured slower fused); ``True`` with "sdpa" raises :class:`InputError`.
    On an H200, with ``merge_time_projections``, a guided SD v1 step took 4.1% less time at batch 2
    (6.14 against 6.40 ms) and the same at batch 16 (benchmarks/RESULTS.md, run V): the products
    it saves are small and many.

    ``merge_time_projections`` computes the timestep-embedding projections of all of the denoiser's
    residual blocks (their ``emb_layers``) as one matrix product instead of one each
    (:mod:`ldmkit.fast.time_projections`; the compiler merges them, so it needs ``compile``).
    ``None`` turns it on wherever the fast path compiles.

    ``merge_context_projections`` computes the keys and values of all cross-attentions (their
    ``fuse_qkv`` products of the conditioning) as one matrix product
    (:mod:`ldmkit.fast.context_projections`; the compiler merges them, so it needs ``compile``, and it
    needs ``fuse_qkv``). ``None`` turns it on wherever both are on. On an H100 a guided batch-2 SD v1
    step took 1.0% less time with it (5.91 against 5.97 ms, same rounds), its guided eps error
    6.644e-2 against 6.693e-2 (benchmarks/RESULTS.md, run X).

    ``approximate_gelu`` gates the GEGLU kernel's output by the tanh form of GELU (PyTorch's
    ``gelu(approximate="tanh")``, one tanh instruction of the GPU) instead of the exact erf form the
    models were trained with: the two differ by at most about 5e-4 at any input, below half a bf16
    step of the values they multiply. It needs ``geglu_kernel`` (``InputError`` otherwise).
    ``None`` turns it on wherever the GEGLU kernel runs. On an H100 the kernel took 8-27% less time
    at the SD v1 UNet's shapes (197 against 269 us at 64x64 latents, batch 16) with the same error
    against the exact float32 module (3.70e-3 against 3.69e-3), and a guided batch-2 step 3.1% less
    (6.17 against 6.37 ms, same rounds), its guided eps error 6.660e-2 against 6.605e-2, within the
    precision line of 6.954e-2 (benchmarks/RESULTS.md, run W).

    ``cudnn_benchmark`` lets cuDNN time its convolution algorithms for each new shape and keep the
    fastest (``torch.backends.cudnn.benchmark``), only around the fast path's own calls: the global
    flag is restored after each. A captured CUDA graph keeps the algorithms chosen while it was
    captured. ``None`` turns it on for CUDA devices; it stays off wherever deterministic algorithms
    are asked for (``torch.backends.cudnn.deterministic`` or
    ``torch.use_deterministic_algorithms``), whatever the setting. The GPU timings of
    benchmarks/RESULTS.md up to run V were taken with the flag on for the whole process.

    ``fp8_linear`` (off unless asked) runs the denoiser's linear layers (attention projections,
    feed-forward) as float8 (e4m3) matrix products, weights scaled per output channel and inputs per
    row (:mod:`ldmkit.fast.fp8`); GPUs of compute capability 8.9 and later (Ada, Hopper) multiply
    them at about twice the bf16 rate. It needs precision bf16 or fp16 and, on CUDA, such a GPU
    (``InputError`` otherwise); on the CPU it runs a slow reference path that dequantizes (for
    tests). Each such layer's output lies about 4e-2 (relative) from float32 on random inputs,
    against bf16's ~3e-3, so its quality is judged on finished pictures (benchmarks/fp8_quality.py).
    GEGLU projections computed by ``geglu_kernel`` keep that kernel; with ``geglu_kernel=False``
    they are fp8 too.

    ``autotune_matmuls`` (off unless asked) lets the compiler time its own Triton matrix-product
    templates against cuBLAS for each of the denoiser's products when it compiles them, keeping the
    faster, and fuse what follows a product (bias, residual add) into the Triton ones: inductor's
    ``max_autotune_gemm`` alone, not the ``max-autotune`` modes, which also tune every other kernel
    and took minutes to compile the SD v1 UNet. Compilation takes longer (each distinct product is
    timed once, then cached with the compiled kernels). It needs ``compile`` (``InputError``
    otherwise). At batch 16 the SD v1 UNet's linear layers run at about 59% of their roofline
    against the convolutions' 99% (benchmarks/RESULTS.md); its effect on the step is not yet timed.

    ``tile_size`` (latent pixels) makes decoding of larger latents run tile by tile, tiles
    overlapping by ``tile_overlap`` latent pixels and blended linearly in pixel space.
    """

    precision: Precision | None = None
    channels_last: bool | None = None
    compile: bool | None = None
    cuda_graphs: bool | None = None
    compile_mode: str = "default"
    norm_kernels: bool | None = None
    geglu_kernel: bool | None = None
    attention_kernel: str | None = None
    attention_tiles: bool | None = None
    fuse_qkv: bool | None = None
    merge_time_projections: bool | None = None
    merge_context_projections: bool | None = None
    approximate_gelu: bool | None = None
    cudnn_benchmark: bool | None = None
    fp8_linear: bool = False
    autotune_matmuls: bool = False
    tile_size: int | None = None
    tile_overlap: int = 8
    max_graphs: int = 4

    def __post_init__(self) -> None:
        if self.precision is not None and self.precision not in DTYPES:
            raise InputError(f"precision must be one of {sorted(DTYPES)} or None, got {self.precision!r}")
        for name in (
            "channels_last",
            "compile",
            "cuda_graphs",
            "geglu_kernel",
            "norm_kernels",
            "attention_tiles",
            "fuse_qkv",
            "merge_time_projections",
            "merge_context_projections",
            "approximate_gelu",
            "cudnn_benchmark",
        ):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise InputError(f"{name} must be True, False or None, got {value!r}")
        for name in ("fp8_linear", "autotune_matmuls"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.fp8_linear and self.precision == "fp32":
            raise InputError(_FP8_PRECISION.format(precision="fp32"))
        if self.attention_kernel is not None and self.attention_kernel not in ATTENTION_KERNELS:
            raise InputError(
                f"attention_kernel must be one of {list(ATTENTION_KERNELS)} or None, got {self.attention_kernel!r}"
            )
        if self.compile_mode not in COMPILE_MODES:
            raise InputError(f"compile_mode must be one of {list(COMPILE_MODES)}, got {self.compile_mode!r}")
        if self.cuda_graphs and self.compile and self.compile_mode in _MODES_WITH_GRAPHS:
            raise InputError(
                f"compile_mode={self.compile_mode!r} captures CUDA graphs itself; use cuda_graphs=False with it, "
                "or compile_mode='default' / 'max-autotune-no-cudagraphs'"
            )
        if self.tile_size is not None and (not _is_int(self.tile_size) or self.tile_size < 1):
            raise InputError(f"tile_size must be a positive number of latent pixels or None, got {self.tile_size!r}")
        if not _is_int(self.tile_overlap) or self.tile_overlap < 0:
            raise InputError(f"tile_overlap must be >= 0, got {self.tile_overlap!r}")
        if self.tile_size is not None and 2 * self.tile_overlap >= self.tile_size:
            raise InputError(
                f"tile_overlap ({self.tile_overlap}) must be less than half of tile_size ({self.tile_size})"
            )
        if not _is_int(self.max_graphs) or self.max_graphs < 1:
            raise InputError(f"max_graphs must be >= 1, got {self.max_graphs!r}")

    def resolve(self, device: torch.device) -> Resolved:
        """The concrete settings on ``device`` (CUDA graphs only ever on CUDA)."""
        cuda = device.type == "cuda"
        precision = self.precision or ("bf16" if cuda else "fp32")
        graphs = cuda if self.cuda_graphs is None else (self.cuda_graphs and cuda)
        compile_ = cuda if self.compile is None else self.compile
        if graphs and compile_ and self.compile_mode in _MODES_WITH_GRAPHS:
            graphs = False
        dtype = DTYPES[precision]
        attention_kernel = self._attention_kernel(device, dtype)
        geglu_kernel = self._geglu_kernel(device, dtype)
        fuse_qkv = self._fuse_qkv(attention_kernel)
        return Resolved(
            dtype=dtype,
            channels_last=cuda if self.channels_last is None else self.channels_last,
            compile=compile_,
            compile_mode=self.compile_mode,
            cuda_graphs=graphs,
            norm_kernels=self._norm_kernels(device, dtype),
            geglu_kernel=geglu_kernel,
            attention_kernel=attention_kernel,
            attention_tiles=self._attention_tiles(attention_kernel),
            fuse_qkv=fuse_qkv,
            merge_time_projections=self._merge_time_projections(compile_),
            merge_context_projections=self._merge_context_projections(compile_, fuse_qkv),
            approximate_gelu=self._approximate_gelu(geglu_kernel),
            cudnn_benchmark=cuda if self.cudnn_benchmark is None else self.cudnn_benchmark,
            fp8_linear=self._fp8_linear(device, precision),
            autotune_matmuls=self._autotune_matmuls(compile_),
            tile_size=self.tile_size,
            tile_overlap=self.tile_overlap,
            max_graphs=self.max_graphs,
        )

    def _norm_kernels(self, device: torch.device, dtype: torch.dtype) -> bool:
        from ldmkit.fast.support import hopper_with_triton, triton_available

        if self.norm_kernels is None:  # on where they were measured
            return hopper_with_triton(device) and dtype in (torch.bfloat16, torch.float16)
        if self.norm_kernels and not triton_available():
            raise InputError("norm_kernels=True needs Triton (it comes with CUDA builds of torch); it is not installed")
        return self.norm_kernels

    def _attention_kernel(self, device: torch.device, dtype: torch.dtype) -> str:
        if self.attention_kernel == "sdpa":
            return "sdpa"
        from ldmkit.fast.attention import kernel_unusable_reason

        if self.attention_kernel is None:  # the fastest measured that runs here: FA4, then FA3, then SDPA
            usable = (k for k in ("fa4", "fa3") if kernel_unusable_reason(k, device, dtype) is None)
            return next(usable, "sdpa")
        reason = kernel_unusable_reason(self.attention_kernel, device, dtype)
        if reason is not None:
            raise InputError(f"attention_kernel={self.attention_kernel!r} cannot run here: {reason}")
        return self.attention_kernel

    def _attention_tiles(self, attention_kernel: str) -> bool:
        if self.attention_tiles and attention_kernel != "fa4":
            raise InputError(
                "attention_tiles=True needs attention_kernel 'fa4' (the tiles are FlashAttention-4's); "
                f"attention here is computed by {attention_kernel!r}"
            )
        return attention_kernel == "fa4" if self.attention_tiles is None else self.attention_tiles

    def _fuse_qkv(self, attention_kernel: str) -> bool:
        if self.fuse_qkv is None:  # the flash kernels read q, k, v as views of one product
            return attention_kernel in ("fa3", "fa4")
        if self.fuse_qkv and attention_kernel == "sdpa":
            raise InputError(
                "fuse_qkv=True needs attention_kernel 'fa3' or 'fa4' (it fuses their modules' projections); "
                "attention here is computed by 'sdpa'"
            )
        return self.fuse_qkv

    def _merge_time_projections(self, compile_: bool) -> bool:
        if self.merge_time_projections and not compile_:
            raise InputError(
                "merge_time_projections=True needs compile=True (the compiler merges the blocks' products; "
                "uncompiled, each block would compute all of them)"
            )
        return compile_ if self.merge_time_projections is None else self.merge_time_projections

    def _merge_context_projections(self, compile_: bool, fuse_qkv: bool) -> bool:
        if self.merge_context_projections and not (compile_ and fuse_qkv):
            raise InputError(
                "merge_context_projections=True needs compile=True and fuse_qkv (it stacks the fused k/v "
                "products, which the compiler merges); here "
                f"compile={compile_}, fuse_qkv={fuse_qkv}"
            )
        if self.merge_context_projections is None:
            return compile_ and fuse_qkv
        return self.merge_context_projections

    def _autotune_matmuls(self, compile_: bool) -> bool:
        if self.autotune_matmuls and not compile_:
            raise InputError("autotune_matmuls=True needs compile=True (the compiler times its matmul templates)")
        return self.autotune_matmuls

    def _approximate_gelu(self, geglu_kernel: bool) -> bool:
        if self.approximate_gelu and not geglu_kernel:
            raise InputError(
                "approximate_gelu=True needs the GEGLU kernel (geglu_kernel: a Hopper GPU with Triton, "
                "precision bf16 or fp16); it is off here"
            )
        return geglu_kernel if self.approximate_gelu is None else self.approximate_gelu

    def _geglu_kernel(self, device: torch.device, dtype: torch.dtype) -> bool:
        from ldmkit.fast.support import hopper_with_triton

        if self.geglu_kernel is False:
            return False
        usable = hopper_with_triton(device) and dtype in (torch.bfloat16, torch.float16)
        if self.geglu_kernel and not usable:
            raise InputError(
                f"geglu_kernel=True needs a Hopper GPU (sm_90) with Triton and precision bf16 or fp16; "
                f"here: device {device}, {str(dtype).removeprefix('torch.')}"
                f"{'' if hopper_with_triton(device) else ', no Hopper GPU with Triton'}"
            )
        return usable

    def _fp8_linear(self, device: torch.device, precision: str) -> bool:
        from ldmkit.fast.fp8 import fp8_linear_supported

        if not self.fp8_linear:
            return False
        if precision == "fp32":
            raise InputError(_FP8_PRECISION.format(precision=precision))
        if device.type == "cpu":
            log.warning("fp8_linear on the CPU: the reference path dequantizes every layer (slow; for tests)")
        elif not fp8_linear_supported(device):
            raise InputError(
                f"fp8_linear=True needs a CUDA GPU with fp8 matmuls (compute capability 8.9 or later: Ada, Hopper) "
                f"or the CPU (a slow reference path); here: device {device}{_capability_note(device)}"
            )
        return True


_FP8_PRECISION = (
    "fp8_linear=True needs precision bf16 or fp16 (the fp8 products are scaled back into that dtype); "
    "got {precision}: pass precision='bf16'"
)


def _capability_note(device: torch.device) -> str:
    """The compute capability of a CUDA device, as a clause for error messages (empty for other devices)."""
    if device.type != "cuda":
        return ""
    if not torch.cuda.is_available():
        return ", no CUDA device visible"
    major, minor = torch.cuda.get_device_capability(device)
    return f", compute capability {major}.{minor}"


@dataclass(frozen=True)
class Resolved:
    """Concrete fast-path settings for one device."""

    dtype: torch.dtype
    channels_last: bool
    compile: bool
    compile_mode: str
    cuda_graphs: bool
    norm_kernels: bool
    geglu_kernel: bool
    attention_kernel: str
    attention_tiles: bool
    fuse_qkv: bool
    merge_time_projections: bool
    merge_context_projections: bool
    approximate_gelu: bool
    cudnn_benchmark: bool
    fp8_linear: bool
    autotune_matmuls: bool
    tile_size: int | None
    tile_overlap: int
    max_graphs: int

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def fast_config(config: FastConfig | str | None = None, /, **overrides: Any) -> FastConfig:
    """``config`` (default: every setting by device) with ``overrides`` applied, as a checked :class:`FastConfig`.

    ``config`` may also be a precision name ("fp32", "bf16", "fp16") as a shorthand for
    ``FastConfig(precision=...)``. An override that names no setting raises :class:`InputError`.
    """
    if config is None or isinstance(config, str):
        base = FastConfig() if config is None else FastConfig(precision=config)  # type: ignore[arg-type]
    elif isinstance(config, FastConfig):
        base = config
    else:
        raise InputError(f"config must be a FastConfig, a precision name or None, got {type(config).__name__}")
    names = [f.name for f in dataclasses.fields(FastConfig)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise InputError(f"unknown fast-path setting(s) {', '.join(unknown)}; settings: {', '.join(names)}")
    return dataclasses.replace(base, **overrides) if overrides else base
