"""GPU sampling benchmark: the Stable Diffusion v1 UNet and KL-f8 autoencoder, ldmkit against diffusers.

One run on one GPU, random weights (the same weights in both libraries, converted with
``ldmkit.diffusers_interop``): an equivalence check, ms per UNet call (ldmkit eager fp32 / bf16,
ldmkit fast path, the fast path's guided step, diffusers eager bf16 with SDPA, diffusers
torch.compile), achieved TFLOP/s and share of the measured bf16 matmul peak, VAE decode ms of a
512x512 picture, and pictures/s for 50 DDIM steps with classifier-free guidance, decode included.
Prints a markdown table and writes it to ``--out``.

    python benchmarks/gpu_sampling.py --out gpu_sampling.md
    python benchmarks/gpu_sampling.py --tiny --device cpu --out /tmp/t.md   # a quick smoke run
"""

from __future__ import annotations

import argparse
import functools
import logging
import time
from pathlib import Path
from typing import Any

import torch
from _common import (  # this folder is on sys.path when the script runs
    count_flops,
    ensure_importable,
    markdown_table,
    matmul_peak_tflops,
    randomize_zeroed,
    rel_err,
    sync,
    time_ms,
)

log = logging.getLogger("gpu_sampling")

SD_UNET: dict[str, Any] = {
    "image_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "channel_mult": [1, 2, 4, 4],
    "attention_resolutions": [4, 2, 1],
    "num_res_blocks": 2,
    "num_heads": 8,
    "use_spatial_transformer": True,
    "transformer_depth": 1,
    "context_dim": 768,
    "legacy": False,
}
SD_VAE: dict[str, Any] = {
    "embed_dim": 4,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "z_channels": 4,
    "double_z": True,
    "resolution": 256,
    "attn_resolutions": [],
}
TINY_UNET = {**SD_UNET, "model_channels": 32, "channel_mult": [1, 2], "attention_resolutions": [2], "num_heads": 2,
             "context_dim": 32}  # fmt: skip
TINY_VAE = {**SD_VAE, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1}


class Run:
    """Settings and results of one benchmark run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.t0 = time.perf_counter()
        self.rows: list[list[str]] = []
        self.notes: list[str] = []
        self.peak = float("nan")

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def over_budget(self) -> bool:
        return self.elapsed() > self.args.budget_s

    def row(self, what: str, batch: str, ms: float | None, flops: int | None = None, extra: str = "") -> None:
        if ms is None:
            self.add([what, batch, "skipped", "", "", extra])
            return
        tflops = flops / (ms * 1e-3) / 1e12 if flops else float("nan")
        share = f"{100 * tflops / self.peak:.1f}%" if flops else ""
        self.add([what, batch, f"{ms:.2f}", f"{tflops:.3g}" if flops else "", share, extra])
        log.info("%s batch %s: %.2f ms %s", what, batch, ms, extra)

    def add(self, row: list[str]) -> None:
        """Record a row and rewrite the table: a run cut short keeps every row measured so far."""
        self.rows.append(row)
        self.write()

    def write(self) -> str:
        header = ["what", "batch", "ms", "TFLOP/s", "share of matmul peak", "notes"]
        title = "# GPU sampling benchmark (SD v1 UNet, KL-f8 VAE, random weights)"
        text = "\n".join([title, "", markdown_table(header, self.rows), ""] + [f"- {note}" for note in self.notes])
        self.args.out.write_text(text + "\n")
        return text


def build_models(run: Run) -> tuple[torch.nn.Module, torch.nn.Module]:
    from ldmkit_autoencoders.kl import KLAutoencoder
    from ldmkit_unet.unet import UNet

    torch.manual_seed(0)
    unet = UNet.from_params(TINY_UNET if run.args.tiny else SD_UNET)
    vae = KLAutoencoder.from_params(TINY_VAE if run.args.tiny else SD_VAE)
    randomize_zeroed(unet)
    return unet.eval().to(run.device), vae.eval().to(run.device)


def build_diffusers(unet: torch.nn.Module, vae: torch.nn.Module, run: Run) -> tuple[Any, Any] | None:
    """The same weights in diffusers' UNet2DConditionModel and AutoencoderKL (None without diffusers)."""
    try:
        import diffusers
    except ImportError:
        run.notes.append("diffusers is not installed: its rows are skipped")
        return None
    from ldmkit.diffusers_interop import autoencoder_to_diffusers, unet_to_diffusers

    config, state = unet_to_diffusers(unet)
    d_unet = diffusers.UNet2DConditionModel.from_config(config)
    d_unet.load_state_dict(state, strict=True)
    config, state = autoencoder_to_diffusers(vae, scaling_factor=0.18215)
    d_vae = diffusers.AutoencoderKL.from_config(config)
    d_vae.load_state_dict(state, strict=True)
    run.notes.append(f"diffusers {diffusers.__version__}")
    return d_unet.eval().to(run.device), d_vae.eval().to(run.device)


def inputs(batch: int, run: Run, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    side = 8 if run.args.tiny else 64
    ctx = TINY_UNET["context_dim"] if run.args.tiny else 768
    g = torch.Generator(device=run.device).manual_seed(batch)
    x = torch.randn(batch, 4, side, side, device=run.device, generator=g)
    t = torch.full((batch,), 500, device=run.device, dtype=torch.long)
    ctx_t = torch.randn(batch, 77, ctx, device=run.device, generator=g)
    return x.to(dtype), t, ctx_t.to(dtype)


def check_equivalence(unet, vae, d_unet, d_vae, run: Run) -> None:
    """ldmkit and diffusers compute the same function on the converted weights.

    Compared in float32 with TF32 off: two bf16 implementations of a deep random-weight network drift
    apart by ~1e-2 from rounding alone, which would hide a real difference.
    """
    from ldmkit import Conditioning

    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        x, t, ctx = inputs(2, run, torch.float32)
        with torch.no_grad():
            err_unet = rel_err(unet(x, t, Conditioning(crossattn=ctx)), d_unet(x, t, encoder_hidden_states=ctx).sample)
            z = torch.randn(1, 4, *([8] if run.args.tiny else [64]) * 2, device=run.device)
            err_vae = rel_err(vae.decode(z), d_vae.decode(z).sample)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    ok = err_unet < 1e-4 and err_vae < 1e-4
    note = (
        f"equivalence (float32, TF32 off): UNet rel. error {err_unet:.2e}, VAE decode rel. error {err_vae:.2e} "
        f"({'same function' if ok else 'MISMATCH'})"
    )
    log.info(note)  # logged at once: a run cut short still shows it
    run.notes.append(note)


def bench_unet(unet, d_unet, pipe, run: Run, batch: int) -> None:
    from ldmkit import Conditioning
    from ldmkit.fast.modules import compile_options

    args = run.args
    reps = dict(warmup=args.warmup, repeats=args.repeats)
    x32, t, ctx32 = inputs(batch, run, torch.float32)
    cond32 = Conditioning(crossattn=ctx32)
    x16, ctx16 = x32.to(torch.bfloat16), ctx32.to(torch.bfloat16)

    # FLOPs once, on the float32 module (the count does not depend on the dtype)
    flops = count_flops(lambda: unet(x32, t, cond32))
    run.row("ldmkit eager fp32 (TF32 allowed)", str(batch), time_ms(lambda: unet(x32, t, cond32), run.device, **reps),
            flops)  # fmt: skip
    unet_bf16 = pipe.fast.denoiser.module if pipe.fast is not None else None
    if unet_bf16 is not None:
        cond16 = Conditioning(crossattn=ctx16)
        run.row("ldmkit eager bf16", str(batch), time_ms(lambda: unet_bf16(x16, t, cond16), run.device, **reps), flops)
        # the fast path as the sampler calls it: float32 in and out, bf16 inside, compiled, graphed
        fn = pipe.fast.denoiser.model_fn(pipe.schedule.alphas_cumprod, cond32, None, 1.0)
        t0 = time.perf_counter()
        fn(x32, t)
        sync(run.device)
        first = time.perf_counter() - t0
        with torch.no_grad():
            err = rel_err(fn(x32, t).float(), unet(x32, t, cond32).float())  # against the fp32 module
        run.row("ldmkit fast path", str(batch), time_ms(lambda: fn(x32, t), run.device, **reps), flops,
                f"first call (compile/capture) {first:.1f} s; rel. error vs fp32 {err:.2e}; "
                f"{pipe.fast.describe()}")  # fmt: skip
        if batch % 2 == 0:
            bench_guided(unet, pipe, run, x32[: batch // 2], t[: batch // 2], ctx32)
    if d_unet is not None:
        run.row("diffusers eager bf16 (SDPA)", str(batch),
                time_ms(lambda: d_unet(x16, t, encoder_hidden_states=ctx16), run.device, **reps), flops)  # fmt: skip
        if args.compile and not run.over_budget():
            # the inductor options of ldmkit's fast path, for a like-for-like comparison
            options = compile_options(args.compile_mode)
            compiled = torch.compile(d_unet, dynamic=False, options=options)
            note = f"diffusers and ldmkit's fast path compile with the same inductor options: {options}"
            if note not in run.notes:
                run.notes.append(note)
            t0 = time.perf_counter()
            with torch.no_grad():
                compiled(x16, t, encoder_hidden_states=ctx16)
            sync(run.device)
            first = time.perf_counter() - t0
            run.row("diffusers bf16 channels_last torch.compile", str(batch),
                    time_ms(lambda: compiled(x16, t, encoder_hidden_states=ctx16), run.device, **reps), flops,
                    f"first call (compile) {first:.1f} s")  # fmt: skip
        else:
            run.row("diffusers bf16 channels_last torch.compile", str(batch), None, extra="time budget or --no-compile")


def bench_guided(
    unet, pipe, run: Run, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, label: str = "ldmkit fast path"
) -> None:
    """One guided step of x's pictures (UNet batch 2B, as a sampler calls it) on the fast path.

    Its rows before the first cross-attention are computed once for both halves, so it counts
    fewer FLOPs than a plain call of batch 2B; the TFLOP/s column counts the FLOPs it executes.
    """
    from ldmkit import Conditioning

    n = x.shape[0]
    uncond, cond = Conditioning(crossattn=ctx[:n]), Conditioning(crossattn=ctx[n:])
    both = Conditioning.cat([uncond, cond])
    scale = 7.5
    fn = pipe.fast.denoiser.model_fn(pipe.schedule.alphas_cumprod, cond, uncond, scale)
    t0 = time.perf_counter()
    fn(x, t)
    sync(run.device)
    first = time.perf_counter() - t0
    # the guided eps magnifies the UNet's rounding by the scale: compare it with the same
    # combination of the fast path's unshared batch-2B call, both against float32
    plain = pipe.fast.denoiser.model_fn(pipe.schedule.alphas_cumprod, both, None, 1.0)
    with torch.no_grad():
        expected = unet(torch.cat([x, x]), torch.cat([t, t]), both)  # float32, no sharing
        e_u, e_c = expected.chunk(2)
        reference = e_u + scale * (e_c - e_u)
        err = rel_err(fn(x, t).float(), reference)
        unshared = plain(torch.cat([x, x]), torch.cat([t, t]))  # the UNet's output (eps prediction)
        err_call = rel_err(unshared.float(), expected)
        e_u, e_c = unshared.chunk(2)
        err_unshared = rel_err(e_u + scale * (e_c - e_u), reference)
    flops = count_flops(lambda: unet.forward_guided(x, t, both))
    run.row(f"{label}, guided step", f"{2 * n} ({n} pictures)", time_ms(lambda: fn(x, t), run.device,
            warmup=run.args.warmup, repeats=run.args.repeats), flops,
            f"first call (compile/capture) {first:.1f} s; guided eps (scale {scale}) rel. error vs fp32 "
            f"{err:.2e}, unshared batch-{2 * n} call {err_unshared:.2e}; "
            f"UNet output of that call rel. error vs fp32 {err_call:.2e}; "
            f"{flops / 1e12:.2f} TFLOP executed")  # fmt: skip


def bench_vae(vae, d_vae, pipe, run: Run) -> None:
    side = 8 if run.args.tiny else 64
    z = torch.randn(1, 4, side, side, device=run.device)
    reps = dict(warmup=2, repeats=max(3, run.args.repeats // 2))
    run.row("VAE decode, ldmkit eager fp32", "1 picture", time_ms(lambda: vae.decode(z), run.device, **reps))
    if pipe.fast is not None:
        t0 = time.perf_counter()
        with torch.no_grad():
            pipe.fast.decoder(z)
        sync(run.device)
        first = time.perf_counter() - t0
        run.row("VAE decode, ldmkit fast path", "1 picture", time_ms(lambda: pipe.fast.decoder(z), run.device, **reps),
                extra=f"first call (compile) {first:.1f} s")  # fmt: skip
    if d_vae is not None:
        z16 = z.to(torch.bfloat16)
        run.row("VAE decode, diffusers eager bf16", "1 picture", time_ms(lambda: d_vae.decode(z16), run.device, **reps))


def bench_pictures(pipe, run: Run, n: int, label: str) -> None:
    """Pictures/s of n pictures: 50 DDIM steps with guidance (UNet batch 2n), then decode."""
    from ldmkit import Conditioning

    ctx = TINY_UNET["context_dim"] if run.args.tiny else 768
    g = torch.Generator(device=run.device).manual_seed(n)
    cond = Conditioning(crossattn=torch.randn(n, 77, ctx, device=run.device, generator=g))
    uncond = Conditioning(crossattn=torch.zeros(n, 77, ctx, device=run.device))

    def once() -> None:
        latents = pipe.sample(cond, uncond=uncond, guidance_scale=7.5, steps=run.args.steps,
                              generator=torch.Generator().manual_seed(0))  # fmt: skip
        pipe.decode(latents)

    with torch.no_grad():
        ms = time_ms(once, run.device, warmup=1, repeats=run.args.picture_repeats)
    run.add([f"{label}: {run.args.steps} DDIM steps + guidance + decode", f"{n} pictures", f"{ms:.0f}", "", "",
             f"{n / (ms * 1e-3):.2f} pictures/s"])  # fmt: skip
    log.info("%s %d pictures: %.0f ms", label, n, ms)


def fast_settings(text: str) -> dict[str, bool | str | None]:
    """``"precision=fp16,norm_kernels=True"`` -> keyword arguments of ``Pipeline.optimize`` (True/False/None and
    whole numbers converted, other values kept as text)."""
    ensure_importable()
    from ldmkit.errors import InputError
    from ldmkit.fast import FastConfig

    values = {"True": True, "False": False, "None": None}
    settings: dict[str, bool | str | None] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not value:
            raise argparse.ArgumentTypeError(f"{item!r}: expected NAME=VALUE")
        settings[name.strip()] = values.get(value, int(value) if value.isdigit() else value)
    try:
        FastConfig(**settings)  # fail now, not after minutes of timing
    except (InputError, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from exc
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown file for the table")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", default="2,16", help="UNet batch sizes (guided sampling: 2 x pictures)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--picture-repeats", type=int, default=2)
    parser.add_argument("--compile-mode", default="default", help="e.g. max-autotune-no-cudagraphs if time allows")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--no-diffusers", dest="diffusers", action="store_false")
    parser.add_argument("--budget-s", type=float, default=270.0, help="skip optional compiles after this many s")
    parser.add_argument("--tiny", action="store_true", help="small models (a smoke run, e.g. on the CPU)")
    parser.add_argument("--ab", action="append", default=[], type=fast_settings, metavar="NAME=VALUE[,NAME=VALUE]",
                        help="also time guided steps with these optimize() settings, e.g. norm_kernels=True "
                        "(repeatable: one A/B row each)")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ensure_importable()
    from ldmkit import NoiseSchedule, Pipeline, ScheduleSpec

    run = Run(args)
    if run.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        run.notes.append(f"device: {torch.cuda.get_device_name(run.device)}, torch {torch.__version__}")
    n = 1024 if args.tiny else 8192
    peak_dtype = torch.bfloat16 if run.device.type == "cuda" else torch.float32
    run.peak = matmul_peak_tflops(run.device, peak_dtype, n)
    run.notes.append(f"measured {peak_dtype} matmul peak ({n}^3): {run.peak:.3g} TFLOP/s")
    log.info(run.notes[-1])

    unet, vae = build_models(run)
    diff = build_diffusers(unet, vae, run) if args.diffusers else None
    d_unet, d_vae = diff if diff is not None else (None, None)
    if diff is not None:
        check_equivalence(unet, vae, d_unet, d_vae, run)
        d_unet.to(torch.bfloat16, memory_format=torch.channels_last)
        d_vae.to(torch.bfloat16)

    schedule = NoiseSchedule.from_spec(ScheduleSpec(linear_start=0.00085, linear_end=0.012))
    side = 8 if args.tiny else 64
    pipe = Pipeline(vae, unet, schedule=schedule, scale_factor=0.18215, latent_size=(side, side))
    pictures = [max(1, int(b) // 2) for b in args.batches.split(",")]
    for n_pics in pictures:
        bench_pictures(pipe, run, n_pics, "ldmkit eager fp32")
    optimize = functools.partial(pipe.optimize, precision="bf16", channels_last=True, compile=args.compile,
                                 cuda_graphs=run.device.type == "cuda", compile_mode=args.compile_mode)  # fmt: skip
    optimize()
    for batch in (int(b) for b in args.batches.split(",")):
        bench_unet(unet, d_unet, pipe, run, batch)
    bench_vae(vae, d_vae, pipe, run)
    for n_pics in pictures:
        bench_pictures(pipe, run, n_pics, "ldmkit fast path")
    for settings in args.ab:
        # the same guided steps with other fast-path settings, for an A/B on this machine
        optimize(**settings)
        label = "ldmkit fast path, " + ", ".join(f"{k}={v}" for k, v in settings.items())
        for batch in (int(b) for b in args.batches.split(",") if int(b) % 2 == 0):
            x, t, ctx = inputs(batch, run, torch.float32)
            bench_guided(unet, pipe, run, x[: batch // 2], t[: batch // 2], ctx, label)
    run.notes.append(f"fast path: {pipe.fast.describe()}; total run time {run.elapsed():.0f} s")

    print(run.write())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
