"""Where the time of one SD v1 UNet call goes on the GPU, and what compiler settings change it.

One run on one GPU, random weights, bf16 and channels_last like the fast path. Writes to ``--out-dir``:

- ``attention.md``: scaled_dot_product_attention per backend at the UNet's attention shapes;
- ``profile.md``: kernel time of one compiled ldmkit UNet call by category (convolution, matmul,
  attention, fused Triton kernels, other) with the FLOPs of each category, and the top kernels
  (``profile-<library>.md``; every kernel in ``profile-<library>.csv``);
- ``variants.md``: ms per UNet call of ldmkit and diffusers (same weights) under each
  torch.compile setting named in ``--variants`` (see ``VARIANTS``); "ldmkit-oldcat" is ldmkit with
  the skip concatenation of earlier versions (a plain ``torch.cat``), "ldmkit-normkernels" ldmkit
  with the fast path's Triton GroupNorm kernels, "ldmkit-fast" the module the fast path compiles (with
  the kernels its defaults choose on this GPU: norm, GEGLU, attention).

    python benchmarks/gpu_unet_profile.py --batch 16 --out-dir prof
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from _common import count_flops, ensure_importable, markdown_table, matmul_peak_tflops, sync, time_ms

log = logging.getLogger("gpu_unet_profile")

# inductor settings of each variant: (torch.compile mode, {inductor config name: value})
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("default", {}),
    "conv1x1-mm": ("default", {"conv_1x1_as_mm": True}),
    # coordinate-descent tuning of every Triton kernel: measured at over 7 minutes of compilation here
    "coordinate-descent": ("default", {"coordinate_descent_tuning": True}),
    # weights as constants of the compiled code
    "freezing": ("default", {"freezing": True}),
    # Triton matmul templates with fused epilogues, chosen per shape against cuBLAS (over 7 min to compile)
    "autotune-gemm": ("default", {"max_autotune_gemm": True}),
    # cheaper settings that change how the normalisation and activation kernels are fused and tiled
    "aggressive-fusion": ("default", {"aggressive_fusion": True}),
    "nd-tiling": ("default", {"triton.prefer_nd_tiling": True}),
    "multi-kernel": ("default", {"triton.multi_kernel": 1}),
    # the hardware exp (ex2.approx) instead of libdevice's exact one: SiLU's exp bounds the norm + SiLU kernels
    "fast-math": ("default", {"use_fast_math": True}),
    "fast-math-coop": ("default", {"use_fast_math": True, "triton.cooperative_reductions": True}),
    "fast-math-pointwise-tuning": ("default", {"use_fast_math": True, "max_autotune_pointwise": True}),
    # includes coordinate-descent tuning, as the mode does
    "autotune": ("max-autotune-no-cudagraphs", {}),
}


@contextlib.contextmanager
def inductor_settings(values: dict[str, Any]) -> Iterator[None]:
    """Inductor config ``values`` (dotted names allowed) for the duration of the block."""
    import torch._inductor.config as cfg

    with cfg.patch(values):
        yield


def category(kernel: str) -> str:
    """The kind of work a CUDA kernel does, from its name."""
    name = kernel.lower()
    if name.startswith("triton_") and not name.startswith("triton_tem"):
        return "fused elementwise/reduction (Triton)"
    if any(s in name for s in ("sdpa", "fmha", "flash", "attention")):
        return "attention"
    if any(s in name for s in ("fprop", "conv", "implicit_gemm", "winograd")):
        return "convolution"
    if any(s in name for s in ("gemm", "nvjet", "cutlass", "triton_tem", "_mm_", "matmul")):
        return "matmul"
    return "other"


def flop_category(op: str) -> str | None:
    if "convolution" in op:
        return "convolution"
    if "attention" in op:
        return "attention"
    if any(op.endswith(s) or f".{s}." in op for s in ("mm", "addmm", "bmm", "baddbmm")):
        return "matmul"
    return None


def flops_by_category(fn: Callable[[], object]) -> dict[str, int]:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    totals: dict[str, int] = defaultdict(int)
    for op, n in counter.get_flop_counts()["Global"].items():
        cat = flop_category(str(op))
        if cat is not None:
            totals[cat] += int(n)
    return totals


def bench_attention(batch: int, device: torch.device, out: Path, peak: float) -> None:
    """SDPA backends at the SD v1 UNet's attention shapes (8 heads at every level)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    F = torch.nn.functional
    shapes = [("self 64x64", 4096, 4096, 40), ("self 32x32", 1024, 1024, 80), ("self 16x16", 256, 256, 160),
              ("cross 64x64", 4096, 77, 40), ("self 64x64, head 64", 4096, 4096, 64)]  # fmt: skip
    backends = {"default": None, "cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}  # fmt: skip
    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention, dynamic=False)  # Triton kernels generated for each shape
    rows = []
    for label, t_q, t_k, d in shapes:
        q = torch.randn(batch, 8, t_q, d, device=device, dtype=torch.bfloat16)
        k = torch.randn(batch, 8, t_k, d, device=device, dtype=torch.bfloat16)
        v = torch.randn_like(k)
        flops = 4 * batch * 8 * t_q * t_k * d
        for name, backend in [*backends.items(), ("flex (Triton)", "flex")]:
            ctx = contextlib.nullcontext() if backend in (None, "flex") else sdpa_kernel([backend])
            try:
                with ctx:
                    op = flex if backend == "flex" else F.scaled_dot_product_attention
                    attend = functools.partial(op, q, k, v)
                    ms = time_ms(attend, device, warmup=3, repeats=20)
            except Exception as exc:  # a backend that refuses the shape (or fails to compile) is reported
                rows.append([label, str(d), name, "n/a", "", str(exc).splitlines()[0][:60]])
                continue
            tflops = flops / (ms * 1e-3) / 1e12
            rows.append([label, str(d), name, f"{ms:.3f}", f"{tflops:.0f}", f"{100 * tflops / peak:.0f}%"])
    text = markdown_table(["shape", "head dim", "backend", "ms", "TFLOP/s", "share of peak / note"], rows)
    out.write_text(f"# SDPA at batch {batch}, 8 heads, bf16\n\n{text}\n")
    log.info("attention:\n%s", text)


def profile_call(fn: Callable[[], object], flops: dict[str, int], device: torch.device, out: Path, peak: float,
                 calls: int = 5) -> None:  # fmt: skip
    """Kernel time per call by category, and the kernels that take most of it."""
    from torch.profiler import ProfilerActivity, profile

    activity = ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU
    with torch.no_grad():
        for _ in range(3):
            fn()
        sync(device)
        with profile(activities=[activity]) as prof:
            for _ in range(calls):
                fn()
            sync(device)
    by_cat: dict[str, float] = defaultdict(float)
    kernels = []
    for event in prof.key_averages():
        us = getattr(event, "device_time_total", 0) if device.type == "cuda" else event.self_cpu_time_total
        if us <= 0:
            continue
        cat = category(event.key)
        by_cat[cat] += us / calls
        kernels.append((us / calls, event.count // calls, cat, event.key))
    total_us = sum(by_cat.values())
    rows = []
    for cat, us in sorted(by_cat.items(), key=lambda kv: -kv[1]):
        f = flops.get(cat, 0)
        tflops = f / (us * 1e-6) / 1e12 if f else float("nan")
        rows.append([cat, f"{us / 1e3:.2f}", f"{100 * us / total_us:.1f}%", f"{f / 1e12:.2f}" if f else "",
                     f"{tflops:.0f}" if f else "", f"{100 * tflops / peak:.0f}%" if f else ""])  # fmt: skip
    top = sorted(kernels, reverse=True)[:40]
    top_rows = [[f"{us / 1e3:.3f}", str(n), cat, name[:110].replace("|", "/")] for us, n, cat, name in top]
    text = "\n".join([
        f"# Kernel time of one call ({calls} calls profiled): {total_us / 1e3:.2f} ms of kernels", "",
        markdown_table(["category", "ms per call", "share", "TFLOP per call", "TFLOP/s", "share of peak"], rows), "",
        "## Top kernels", "", markdown_table(["ms per call", "launches per call", "category", "kernel"], top_rows),
    ])  # fmt: skip
    out.write_text(text + "\n")
    every = ["us per call,launches per call,category,kernel"]
    every += [f"{us:.2f},{n},{cat},{name.replace(',', ';')}" for us, n, cat, name in sorted(kernels, reverse=True)]
    out.with_suffix(".csv").write_text("\n".join(every) + "\n")  # every kernel, for grouping by fused operation
    log.info("profile:\n%s", markdown_table(["category", "ms", "share", "TFLOP", "TFLOP/s", "of peak"], rows))


def compiled_ms(
    module: torch.nn.Module, call: Callable, variant: str, device: torch.device
) -> tuple[float, float, Callable]:
    """(first-call seconds, median ms per call, compiled module) of ``call(compiled)`` under a variant."""
    mode, values = VARIANTS[variant]
    torch._dynamo.reset()
    with inductor_settings(values), torch.no_grad():
        compiled = torch.compile(module, dynamic=False, mode=mode)
        t0 = time.perf_counter()
        call(compiled)
        sync(device)
        first = time.perf_counter() - t0
        ms = time_ms(lambda: call(compiled), device, warmup=5, repeats=20)
    return first, ms, compiled


@contextlib.contextmanager
def unet_concat(name: str) -> Iterator[None]:
    """For "-oldcat" variants: the UNet's skip concatenation as a plain torch.cat (its earlier form)."""
    import ldmkit_unet.unet as unet_module

    original = unet_module.concat_channels
    if "-oldcat" in name:
        unet_module.concat_channels = lambda a, b: torch.cat([a, b], dim=1)
    try:
        yield
    finally:
        unet_module.concat_channels = original


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--variants", default="default,freezing")
    parser.add_argument("--libraries", default="ldmkit,diffusers")
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--no-attention", dest="attention", action="store_false")
    parser.add_argument("--attention-only", action="store_true", help="only the attention table")
    parser.add_argument("--tiny", action="store_true", help="a small UNet on the CPU (a smoke run of the script)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ensure_importable()
    from gpu_sampling import SD_UNET, TINY_UNET

    from ldmkit import Conditioning
    from ldmkit_unet.unet import UNet

    args.out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu" if args.tiny else "cuda")
    torch.backends.cudnn.benchmark = True
    peak = matmul_peak_tflops(device, torch.bfloat16, 1024 if args.tiny else 8192)
    name = "CPU" if args.tiny else torch.cuda.get_device_name(device)
    header = f"{name}, torch {torch.__version__}, bf16 matmul peak {peak:.0f} TFLOP/s"
    log.info(header)
    if args.attention and not args.tiny:
        bench_attention(args.batch, device, args.out_dir / "attention.md", peak)
    if args.attention_only:
        return 0

    torch.manual_seed(0)
    unet = UNet.from_params(TINY_UNET if args.tiny else SD_UNET)
    side, ctx_dim = (8, TINY_UNET["context_dim"]) if args.tiny else (64, 768)
    from _common import randomize_zeroed

    randomize_zeroed(unet)
    unet = unet.eval().to(device)
    x = torch.randn(args.batch, 4, side, side, device=device)
    t = torch.full((args.batch,), 500, device=device, dtype=torch.long)
    ctx = torch.randn(args.batch, 77, ctx_dim, device=device)
    flops = flops_by_category(lambda: unet(x, t, Conditioning(crossattn=ctx)))
    total_flops = count_flops(lambda: unet(x, t, Conditioning(crossattn=ctx)))
    log.info("FLOPs per call: %s (total %.2f TFLOP)", dict(flops), total_flops / 1e12)

    models: dict[str, tuple[torch.nn.Module, Callable]] = {}
    x16, ctx16 = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last), ctx.to(torch.bfloat16)
    if "diffusers" in args.libraries:
        import diffusers

        from ldmkit.diffusers_interop import unet_to_diffusers

        config, state = unet_to_diffusers(unet)
        d_unet = diffusers.UNet2DConditionModel.from_config(config)
        d_unet.load_state_dict(state, strict=True)
        d_unet = d_unet.eval().to(device, torch.bfloat16, memory_format=torch.channels_last)
        models["diffusers"] = (d_unet, lambda m: m(x16, t, encoder_hidden_states=ctx16))
    cond16 = Conditioning(crossattn=ctx16)
    unet16 = unet.to(torch.bfloat16, memory_format=torch.channels_last)
    libraries = args.libraries.split(",")
    for lib in libraries:
        if lib == "ldmkit-normkernels":  # the fast path's Triton GroupNorm kernels
            from ldmkit.fast.norms import with_kernel_group_norms

            models[lib] = (with_kernel_group_norms(unet16), lambda m: m(x16, t, cond16))
        elif lib == "ldmkit-fast":  # the module the fast path compiles, with the kernels its defaults choose here
            from ldmkit.fast import FastConfig
            from ldmkit.fast.modules import FastDenoiser

            # compile=True resolves what the fast path's compiled module holds (this script compiles it itself)
            config = FastConfig(precision="bf16", channels_last=True, compile=True, cuda_graphs=False)
            settings = config.resolve(device)
            log.info("ldmkit-fast: %s", settings)
            if settings.merge_time_projections or settings.merge_context_projections:  # the fast path's pass (others
                import torch._inductor.config as inductor_config  # here have nothing to merge)

                from ldmkit.fast.merge_pass import MergeIdenticalOps

                inductor_config.post_grad_custom_pre_pass = MergeIdenticalOps()
            models[lib] = (FastDenoiser(unet16, settings).module, lambda m: m(x16, t, cond16))
        elif lib.startswith("ldmkit"):
            models[lib] = (unet16, lambda m: m(x16, t, cond16))

    rows = []
    for variant in args.variants.split(","):
        for lib, (module, call) in models.items():
            with unet_concat(lib):
                first, ms, compiled = compiled_ms(module, call, variant, device)
            tflops = total_flops / (ms * 1e-3) / 1e12
            rows.append([variant, lib, f"{ms:.2f}", f"{tflops:.0f}", f"{100 * tflops / peak:.1f}%", f"{first:.0f}"])
            log.info("%s %s: %.2f ms (%.0f TFLOP/s), first call %.0f s", variant, lib, ms, tflops, first)
            text = markdown_table(["variant", "library", "ms per call", "TFLOP/s", "share of peak", "compile s"], rows)
            (args.out_dir / "variants.md").write_text(f"# UNet batch {args.batch}: {header}\n\n{text}\n")
            if args.profile and lib.startswith("ldmkit") and variant == args.variants.split(",")[0]:
                with inductor_settings(VARIANTS[variant][1]):
                    target = args.out_dir / f"profile-{lib}.md"
                    profile_call(lambda c=call, m=compiled: c(m), flops, device, target, peak)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
