"""GPU sampling benchmark: the Stable Diffusion v1 UNet and KL-f8 autoencoder, ldmkit against diffusers at its best.

One run on one GPU, random weights (the same weights in both libraries, converted with
``ldmkit.diffusers_interop`` and checked equal in float32). At each UNet batch, every contender is
compiled first and then timed in interleaved rounds in the same process: ldmkit's fast path (the
guided step a sampler calls, and the plain call), diffusers eager, diffusers with ``torch.compile``
(the stock row) and diffusers at its best documented settings (fused q/k/v, channels_last,
``torch.compile(mode="reduce-overhead")`` with CUDA graphs; see gpu_diffusers.py). Reports ms per
call, achieved TFLOP/s and share of the measured bf16 matmul peak, both speed-ups, each
contender's error against the float32 UNet with TF32 off next to the precision line (diffusers'
compiled bf16 error plus 10%), VAE decode ms, and seconds for 50 guided DDIM steps plus decode.
Writes markdown tables to ``--out`` (rewritten as rows come in, so a run cut short keeps its rows).

    python benchmarks/gpu_sampling.py --out gpu_sampling.md --ab norm_kernels=True
    python benchmarks/gpu_sampling.py --tiny --device cpu --out /tmp/t.md   # a smoke run (diffusers not compiled)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import (  # this folder is on sys.path when the script runs
    count_flops,
    ensure_importable,
    interleaved_ms,
    markdown_table,
    matmul_peak_tflops,
    no_tf32,
    randomize_zeroed,
    rel_err,
    summary_ms,
    sync,
    time_ms,
)
from gpu_diffusers import BEST, EAGER, STOCK, Anchor, convert

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


GUIDANCE = 7.5
RELATIVE_MARGIN = 0.10  # the precision line: no worse than diffusers' compiled bf16 error plus 10%


class Run:
    """Settings and results of one benchmark run; every table is rewritten as rows come in."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.t0 = time.perf_counter()
        self.rows: list[list[str]] = []
        self.ratios: list[list[str]] = []
        self.precision: list[list[str]] = []
        self.notes: list[str] = []
        self.peak = float("nan")
        self.results: dict[str, float] = {}  # what the targets table reads
        self.fast_settings: dict[str, Any] = {}  # the default fast path's optimize() arguments

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
        """Record a row and rewrite the tables: a run cut short keeps every row measured so far."""
        self.rows.append(row)
        self.write()

    def write(self) -> str:
        title = "# GPU sampling benchmark (SD v1 UNet, KL-f8 VAE, random weights)"
        parts = [title, "", markdown_table(["what", "batch", "ms", "TFLOP/s", "share of matmul peak", "notes"],
                                           self.rows), ""]  # fmt: skip
        if self.ratios:
            header = ["batch", "ldmkit", "ldmkit ms", "diffusers", "diffusers ms", "speed-up"]
            parts += ["## ldmkit against diffusers (interleaved rounds, same process)", "",
                      markdown_table(header, self.ratios), ""]  # fmt: skip
        if self.precision:
            header = ["batch", "what", "UNet output rel. error vs fp32", "guided eps rel. error vs fp32",
                      "line (diffusers compiled bf16 + 10%)", "within"]  # fmt: skip
            parts += ["## Precision against float32 (TF32 off), same weights and inputs", "",
                      markdown_table(header, self.precision), ""]  # fmt: skip
        targets = self.targets()
        if targets:
            parts += ["## Targets", "", markdown_table(["target", "measured", "met"], targets), ""]
        text = "\n".join(parts + [f"- {note}" for note in self.notes])
        self.args.out.write_text(text + "\n")
        return text

    def targets(self) -> list[list[str]]:
        """The issue's targets, from what this run measured so far."""
        r, rows = self.results, []
        for batch, goal in ((16, 1.3), (2, 1.2)):
            key = f"speedup_best_{batch}"
            if key in r:
                rows.append([f"batch {batch} guided step >= {goal}x diffusers + compile + CUDA graphs",
                             f"{r[key]:.3f}x", "yes" if r[key] >= goal else "no"])  # fmt: skip
        if "share_plain_16" in r:
            share = r["share_plain_16"]
            rows.append(["batch 16 plain call >= 60% of the bf16 matmul peak", f"{100 * share:.1f}%",
                         "yes" if share >= 0.6 else "no"])  # fmt: skip
        if "picture_s" in r:
            rows.append(["one guided 50-step 512x512 picture with decode <= 0.27 s", f"{r['picture_s']:.3f} s",
                         "yes" if r["picture_s"] <= 0.27 else "no"])  # fmt: skip
        for key in sorted(k for k in r if k.startswith("precision_ok_")):
            batch = key.removeprefix("precision_ok_")
            rows.append([f"batch {batch} fast path UNet output error <= diffusers' compiled bf16 error + 10%",
                         f"{r[f'precision_err_{batch}']:.3e} vs line {r[f'precision_line_{batch}']:.3e}",
                         "yes" if r[key] else "no"])  # fmt: skip
        return rows


@dataclasses.dataclass
class Contender:
    """One timed call: its function, FLOPs, what it returns ("out": the UNet output; "guided": guided eps)."""

    name: str
    fn: Callable[[], torch.Tensor]
    flops: int
    returns: str
    batch: str
    notes: list[str] = dataclasses.field(default_factory=list)
    err_out: float | None = None
    err_guided: float | None = None


def build_models(run: Run) -> tuple[torch.nn.Module, torch.nn.Module]:
    from ldmkit_autoencoders.kl import KLAutoencoder
    from ldmkit_unet.unet import UNet

    torch.manual_seed(0)
    unet = UNet.from_params(TINY_UNET if run.args.tiny else SD_UNET)
    vae = KLAutoencoder.from_params(TINY_VAE if run.args.tiny else SD_VAE)
    randomize_zeroed(unet)
    return unet.eval().to(run.device), vae.eval().to(run.device)


def side_and_context(run: Run) -> tuple[int, int]:
    """Latent side and context width of the benchmarked model."""
    return (8, TINY_UNET["context_dim"]) if run.args.tiny else (64, 768)


def check_equivalence(unet, vae, d_unet, d_vae, run: Run) -> None:
    """ldmkit and diffusers compute the same function on the converted weights.

    Compared in float32 with TF32 off: two bf16 implementations of a deep random-weight network drift
    apart by ~1e-2 from rounding alone, which would hide a real difference.
    """
    from ldmkit import Conditioning

    side, ctx_dim = side_and_context(run)
    g = torch.Generator(device=run.device).manual_seed(1)
    x = torch.randn(2, 4, side, side, device=run.device, generator=g)
    t = torch.full((2,), 500, device=run.device, dtype=torch.long)
    ctx = torch.randn(2, 77, ctx_dim, device=run.device, generator=g)
    z = torch.randn(1, 4, side, side, device=run.device, generator=g)
    with no_tf32(), torch.no_grad():
        err_unet = rel_err(unet(x, t, Conditioning(crossattn=ctx)), d_unet(x, t, encoder_hidden_states=ctx).sample)
        err_vae = rel_err(vae.decode(z), d_vae.decode(z).sample)
    ok = err_unet < 1e-4 and err_vae < 1e-4
    note = (
        f"equivalence (float32, TF32 off): UNet rel. error {err_unet:.2e}, VAE decode rel. error {err_vae:.2e} "
        f"({'same function' if ok else 'MISMATCH'})"
    )
    log.info(note)  # logged at once: a run cut short still shows it
    run.notes.append(note)


def guided_eps(out: torch.Tensor, scale: float = GUIDANCE) -> torch.Tensor:
    """uncond + scale * (cond - uncond) of a [uncond; cond] batch of UNet outputs, in float32."""
    e_u, e_c = out.float().chunk(2)  # (B/2, C, h, w) each
    return e_u + scale * (e_c - e_u)


def guided_inputs(batch: int, run: Run) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x_t and t of batch/2 pictures, and the [uncond; cond] context of a guided UNet call of ``batch`` rows."""
    side, ctx_dim = side_and_context(run)
    g = torch.Generator(device=run.device).manual_seed(batch)
    x = torch.randn(batch // 2, 4, side, side, device=run.device, generator=g)
    t = torch.full((batch // 2,), 500, device=run.device, dtype=torch.long)
    ctx = torch.randn(batch, 77, ctx_dim, device=run.device, generator=g)
    return x, t, ctx


def first_call(c: Contender, run: Run, reference: torch.Tensor) -> bool:
    """Call ``c`` once (compilation, capture), note the seconds and its errors against float32; False if it failed."""
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            out = c.fn()
            sync(run.device)
    except Exception as exc:  # a contender that fails to compile is reported, not fatal to the run
        log.exception("%s failed", c.name)
        c.notes.append(f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        return False
    seconds = time.perf_counter() - t0
    if seconds > 1.0:
        c.notes.append(f"first call {seconds:.0f} s")
    if c.returns == "out":
        c.err_out = rel_err(out, reference)
        c.err_guided = rel_err(guided_eps(out), guided_eps(reference))
    else:
        c.err_guided = rel_err(out, guided_eps(reference))
    log.info("%s: first call %.1f s, errors %s / %s", c.name, seconds, c.err_out, c.err_guided)
    return True


def bench_batch(unet, pipe, anchor: Anchor | None, run: Run, batch: int) -> dict[str, Contender]:
    """Every contender at UNet batch ``batch`` (batch/2 guided pictures), timed in interleaved rounds."""
    from ldmkit import Conditioning

    args, n = run.args, batch // 2
    xh, th, ctx = guided_inputs(batch, run)
    x, t = torch.cat([xh, xh]), torch.cat([th, th])  # the unshared guided call: both halves see the same x_t
    uncond, cond = Conditioning(crossattn=ctx[:n]), Conditioning(crossattn=ctx[n:])
    both = Conditioning.cat([uncond, cond])
    flops = count_flops(lambda: unet(x, t, both))  # on the float32 module; the count does not depend on the dtype
    flops_guided = count_flops(lambda: unet.forward_guided(xh, th, both))
    with no_tf32(), torch.no_grad():
        reference = unet(x, t, both).float()  # (B, 4, h, w)
    plain_label, guided_label = str(batch), f"{batch} ({n} pictures)"

    found: list[Contender] = []
    if args.eager:
        bf16 = Conditioning(crossattn=ctx.to(torch.bfloat16))
        x16 = x.to(torch.bfloat16)
        found.append(Contender("ldmkit eager fp32 (TF32 allowed)", lambda: unet(x, t, both), flops, "out", plain_label))
        module = pipe.fast.denoiser.module
        found.append(Contender("ldmkit eager bf16", lambda: module(x16, t, bf16), flops, "out", plain_label))
    ac = pipe.schedule.alphas_cumprod
    if batch in args.plain_batches:
        plain = pipe.fast.denoiser.model_fn(ac, both, None, 1.0)  # float32 in and out, bf16 inside
        found.append(Contender("ldmkit fast path", lambda: plain(x, t), flops, "out", plain_label))
    guided = pipe.fast.denoiser.model_fn(ac, cond, uncond, GUIDANCE)
    found.append(Contender("ldmkit fast path, guided step", lambda: guided(xh, th), flops_guided, "guided",
                           guided_label))  # fmt: skip
    if anchor is not None:
        for name, call in anchor.calls(x, t, ctx).items():
            if name != STOCK or batch in args.stock_batches:
                found.append(Contender(name, call, flops, "out", plain_label))
    ready = [c for c in found if first_call(c, run, reference)]
    for c in found:
        if c not in ready:
            run.row(c.name, c.batch, None, extra="; ".join(c.notes))
    timed = interleaved_ms({c.name: c.fn for c in ready}, run.device, rounds=args.rounds, warmup=args.warmup,
                           repeats=args.repeats)  # fmt: skip
    by_name = {c.name: c for c in ready}
    medians = {}
    for c in ready:
        ms, low, high = summary_ms(timed[c.name])
        medians[c.name] = ms
        errors = [f"UNet output rel. error vs fp32 {c.err_out:.3e}"] if c.err_out is not None else []
        errors.append(f"guided eps (scale {GUIDANCE}) rel. error {c.err_guided:.3e}")
        spread = f"round medians {low:.2f}-{high:.2f} ms"
        run.row(c.name, c.batch, ms, c.flops, "; ".join([spread, *c.notes, *errors]))
        if c.name == "ldmkit fast path" and batch == 16:
            run.results["share_plain_16"] = c.flops / (ms * 1e-3) / 1e12 / run.peak
    record_ratios(run, batch, medians)
    record_precision(run, batch, ready, precision_base(by_name))
    run.notes.append(f"batch {batch}: {flops / 1e12:.2f} TFLOP per plain call, {flops_guided / 1e12:.2f} TFLOP "
                     f"executed per guided step (the rows before the first cross-attention shared)")  # fmt: skip
    return by_name


def record_ratios(run: Run, batch: int, medians: dict[str, float]) -> None:
    """ldmkit's fast path (guided step and plain call) against each compiled diffusers form."""
    for ours in ("ldmkit fast path, guided step", "ldmkit fast path"):
        for theirs in (STOCK, BEST):
            if ours in medians and theirs in medians:
                speedup = medians[theirs] / medians[ours]
                run.ratios.append([str(batch), ours, f"{medians[ours]:.2f}", theirs, f"{medians[theirs]:.2f}",
                                   f"**{speedup:.3f}x**"])  # fmt: skip
                if ours.endswith("guided step") and theirs == BEST:
                    run.results[f"speedup_best_{batch}"] = speedup
    run.write()


def record_precision(run: Run, batch: int, contenders: list[Contender], base: Contender | None) -> None:
    """Each contender's errors against the line: ``base`` (diffusers' compiled bf16) error plus 10%."""
    line_out = line_guided = None
    if base is not None and base.err_out is not None and base.err_guided is not None:
        line_out, line_guided = (1 + RELATIVE_MARGIN) * base.err_out, (1 + RELATIVE_MARGIN) * base.err_guided
        if base.name == EAGER:
            run.notes.append(f"batch {batch}: diffusers was not compiled; the precision line is its eager bf16 error")
    line = f"{line_out:.3e} / {line_guided:.3e}" if line_out is not None and line_guided is not None else "n/a"
    for c in contenders:
        within = []
        if line_out is not None and c.err_out is not None:
            within.append("yes" if c.err_out <= line_out else "**no**")
        if line_guided is not None and c.err_guided is not None:
            prefix = "guided eps: " if c.err_out is not None else ""
            within.append(prefix + ("yes" if c.err_guided <= line_guided else "**no**"))
        out = f"{c.err_out:.3e}" if c.err_out is not None else ""
        guided = f"{c.err_guided:.3e}" if c.err_guided is not None else ""
        run.precision.append([c.batch, c.name, out, guided, line, ", ".join(within)])
        if c.name == "ldmkit fast path" and line_out is not None and c.err_out is not None:
            run.results[f"precision_err_{batch}"] = c.err_out
            run.results[f"precision_line_{batch}"] = line_out
            run.results[f"precision_ok_{batch}"] = float(c.err_out <= line_out)
    run.write()


def precision_base(contenders: dict[str, Contender]) -> Contender | None:
    """diffusers' compiled bf16 (stock, else the best form: the same compiled arithmetic), whose error sets the
    line; its eager bf16 where compiling is off."""
    return contenders.get(STOCK) or contenders.get(BEST) or contenders.get(EAGER)


def bench_ab(unet, pipe, run: Run, batch: int, settings: dict[str, Any], peers: dict[str, Contender]) -> None:
    """The guided step (and plain call) with other fast-path settings, interleaved with the default and diffusers."""
    from ldmkit import Conditioning

    args, n = run.args, batch // 2
    default = pipe.fast
    pipe.optimize(**{**run.fast_settings, **settings})
    other, pipe.fast = pipe.fast, default  # the pictures and later rows keep the default fast path
    label = "ldmkit fast path, " + ", ".join(f"{k}={v}" for k, v in settings.items())
    xh, th, ctx = guided_inputs(batch, run)
    x, t = torch.cat([xh, xh]), torch.cat([th, th])
    uncond, cond = Conditioning(crossattn=ctx[:n]), Conditioning(crossattn=ctx[n:])
    both = Conditioning.cat([uncond, cond])
    with no_tf32(), torch.no_grad():
        reference = unet(x, t, both).float()
    guided = other.denoiser.model_fn(pipe.schedule.alphas_cumprod, cond, uncond, GUIDANCE)
    ours = [Contender(f"{label}, guided step", lambda: guided(xh, th), peers_flops(peers, "guided"), "guided",
                      f"{batch} ({n} pictures)")]  # fmt: skip
    if args.ab_plain:
        plain = other.denoiser.model_fn(pipe.schedule.alphas_cumprod, both, None, 1.0)
        ours.append(Contender(label, lambda: plain(x, t), peers_flops(peers, "out"), "out", str(batch)))
    ready = []
    for c in ours:
        if run.over_budget():
            run.row(c.name, c.batch, None, extra="time budget")
        elif first_call(c, run, reference):
            ready.append(c)
        else:
            run.row(c.name, c.batch, None, extra="; ".join(c.notes))
    if not ready:
        return
    contenders = [*ready, *(peers[name] for name in ("ldmkit fast path, guided step", BEST) if name in peers)]
    timed = interleaved_ms({c.name: c.fn for c in contenders}, run.device, rounds=args.rounds, warmup=args.warmup,
                           repeats=args.repeats)  # fmt: skip
    for c in contenders:
        ms, low, high = summary_ms(timed[c.name])
        errors = [f"UNet output rel. error vs fp32 {c.err_out:.3e}"] if c.err_out is not None else []
        errors.append(f"guided eps rel. error {c.err_guided:.3e}")
        again = "" if c in ready else " (again, in this A/B's rounds)"
        run.row(c.name + again, c.batch, ms, c.flops, "; ".join([f"round medians {low:.2f}-{high:.2f} ms",
                                                                 *c.notes, *errors]))  # fmt: skip
    record_precision(run, batch, ready, precision_base(peers))


def bench_timeline(run: Run, batch: int, contenders: dict[str, Contender]) -> None:
    """The guided step and diffusers' best call at ``batch``, profiled as timed: every ms on the time line."""
    from step_timeline import profile_calls

    if run.device.type != "cuda":
        run.notes.append(f"time line at batch {batch} skipped: it needs a CUDA device")
        return
    parts = []
    for name in ("ldmkit fast path, guided step", BEST):
        if name not in contenders:
            run.notes.append(f"time line of {name!r} at batch {batch} skipped: not timed in this run")
            continue
        table = profile_calls(contenders[name].fn, run.device).table()
        parts += [f"## {name}, batch {batch}", "", table, ""]
        log.info("time line %s batch %d:\n%s", name, batch, table)
    target = run.args.out.with_name(f"{run.args.out.stem}-timeline-b{batch}.md")
    target.write_text("\n".join([f"# Every ms of a call at batch {batch}, on the device's time line", "", *parts]))
    run.notes.append(f"time line at batch {batch}: {target.name}")


def peers_flops(peers: dict[str, Contender], returns: str) -> int:
    """FLOPs of a peer that returns the same kind of result (the settings change no FLOP count)."""
    return next((c.flops for c in peers.values() if c.returns == returns), 0)


def bench_vae(vae, d_vae, pipe, run: Run) -> None:
    from ldmkit.fast.cudnn import autotuned_convolutions

    side, _ = side_and_context(run)
    z = torch.randn(1, 4, side, side, device=run.device)
    reps = dict(warmup=2, repeats=max(3, run.args.repeats // 2))
    if run.args.eager:
        run.row("VAE decode, ldmkit eager fp32", "1 picture", time_ms(lambda: vae.decode(z), run.device, **reps))
    t0 = time.perf_counter()
    with torch.no_grad():
        pipe.fast.decoder(z)
    sync(run.device)
    first = time.perf_counter() - t0
    run.row("VAE decode, ldmkit fast path", "1 picture", time_ms(lambda: pipe.fast.decoder(z), run.device, **reps),
            extra=f"first call (compile) {first:.1f} s")  # fmt: skip
    if d_vae is not None:
        z16 = z.to(torch.bfloat16)
        with autotuned_convolutions(True):
            ms = time_ms(lambda: d_vae.decode(z16), run.device, **reps)
        run.row("VAE decode, diffusers eager bf16", "1 picture", ms)


def bench_pictures(pipe, run: Run, n: int, label: str) -> None:
    """Seconds for n pictures: 50 DDIM steps with guidance (UNet batch 2n), then decode."""
    from ldmkit import Conditioning
    from ldmkit_samplers.ddim import DDIMSampler

    sampler = DDIMSampler.from_params({})  # the class itself: a plain checkout has no entry points to look it up by
    _, ctx_dim = side_and_context(run)
    g = torch.Generator(device=run.device).manual_seed(n)
    cond = Conditioning(crossattn=torch.randn(n, 77, ctx_dim, device=run.device, generator=g))
    uncond = Conditioning(crossattn=torch.zeros(n, 77, ctx_dim, device=run.device))

    def once() -> None:
        latents = pipe.sample(cond, sampler=sampler, uncond=uncond, guidance_scale=GUIDANCE, steps=run.args.steps,
                              generator=torch.Generator().manual_seed(0))  # fmt: skip
        pipe.decode(latents)

    with torch.no_grad():
        ms = time_ms(once, run.device, warmup=1, repeats=run.args.picture_repeats)
    run.add([f"{label}: {run.args.steps} DDIM steps + guidance + decode", f"{n} pictures", f"{ms:.0f}", "", "",
             f"{n / (ms * 1e-3):.2f} pictures/s"])  # fmt: skip
    if label == "ldmkit fast path" and n == 1 and run.args.steps == 50:
        run.results["picture_s"] = ms * 1e-3
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


def batch_list(text: str) -> list[int]:
    """``"16,2"`` -> [16, 2]: even UNet batch sizes (a guided call holds two rows per picture)."""
    try:
        batches = [int(b) for b in text.split(",") if b.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated whole numbers") from exc
    if not batches or any(b < 2 or b % 2 for b in batches):
        raise argparse.ArgumentTypeError(f"{text!r}: UNet batches must be even and at least 2")
    return batches


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown file for the tables")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", type=batch_list, default=[16, 2],
                        help="UNet batch sizes, in the order run (guided sampling: 2 x pictures)")  # fmt: skip
    parser.add_argument("--plain-batches", type=batch_list, default=[16],
                        help="batches that also time the fast path's plain (unshared) call")  # fmt: skip
    parser.add_argument("--stock-batches", type=batch_list, default=[16, 2],
                        help="batches that also time diffusers' stock torch.compile row (a compile each)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--warmup", type=int, default=3, help="calls before each round's timed calls")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per round")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--picture-repeats", type=int, default=2)
    parser.add_argument("--compile-mode", default="default", help="of ldmkit's fast path (and the stock compile)")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--no-diffusers", dest="diffusers", action="store_false")
    parser.add_argument("--eager", action="store_true", help="also time the eager rows (ldmkit fp32 and bf16)")
    parser.add_argument("--budget-s", type=float, default=400.0, help="skip the A/B compiles after this many s")
    parser.add_argument("--tiny", action="store_true", help="small models (a smoke run, e.g. on the CPU)")
    parser.add_argument("--ab", action="append", default=[], type=fast_settings, metavar="NAME=VALUE[,NAME=VALUE]",
                        help="also time the guided step with these optimize() settings, e.g. norm_kernels=True "
                        "(repeatable), interleaved with the default and diffusers' best")  # fmt: skip
    parser.add_argument("--ab-batches", type=batch_list, default=[16])
    parser.add_argument("--no-ab-plain", dest="ab_plain", action="store_false",
                        help="A/B: skip the plain call (its UNet output error; one more compile)")  # fmt: skip
    parser.add_argument("--fa4-tiles", type=fa4_tiles_file,
                        help="JSON of FlashAttention-4 tiles by head width (gpu_fa4_tiles.py --winners) put into "
                        "ldmkit.fast.attention.FA4_HOPPER_TILES before anything is built; A/B attention_tiles=False "
                        "against them")  # fmt: skip
    parser.add_argument("--timeline-batches", type=batch_list, default=[],
                        help="batches whose guided step (and diffusers' best call) is profiled on the device's "
                        "time line: kernels by kind plus idle gaps, adding up to the span")  # fmt: skip
    return parser.parse_args(argv)


def fa4_tiles_file(text: str) -> dict[int, tuple[int, int, bool, bool]]:
    """--fa4-tiles: {"head width": [tile_m, tile_n, P in registers, overlap]} from a JSON file."""
    try:
        entries = json.loads(Path(text).read_text()).items()
        return {int(w): (int(m), int(n), bool(r), bool(o)) for w, (m, n, r, o) in entries}
    except (OSError, ValueError, TypeError, AttributeError) as exc:  # unreadable, not JSON, or not that shape
        raise argparse.ArgumentTypeError(
            f'{text}: expected a JSON file of {{"head width": [tile_m, tile_n, rs, overlap]}} ({exc})'
        ) from exc


def use_fa4_tiles(tiles: dict[int, tuple[int, int, bool, bool]], run: Run) -> None:
    """Put ``tiles`` into the table the fast path's attention_tiles setting reads."""
    from ldmkit.fast.attention import FA4_HOPPER_TILES

    FA4_HOPPER_TILES.update(tiles)
    run.notes.append(f"FlashAttention-4 tiles by head width: {tiles or 'none'}")
    log.info(run.notes[-1])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ensure_importable()
    from ldmkit import NoiseSchedule, Pipeline, ScheduleSpec
    from ldmkit.fast.modules import compile_options

    run = Run(args)
    if args.fa4_tiles is not None:
        use_fa4_tiles(args.fa4_tiles, run)
    cuda = run.device.type == "cuda"
    if cuda:
        # cuDNN's autotuner is left to each library: ldmkit's fast path turns it on around its calls
        # (FastConfig.cudnn_benchmark), the diffusers forms run with it on (gpu_diffusers.autotuned_call)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        run.notes.append(f"device: {torch.cuda.get_device_name(run.device)}, torch {torch.__version__}")
    n = 1024 if args.tiny else 8192
    peak_dtype = torch.bfloat16 if cuda else torch.float32
    run.peak = matmul_peak_tflops(run.device, peak_dtype, n)
    run.notes.append(f"measured {peak_dtype} matmul peak ({n}^3): {run.peak:.3g} TFLOP/s")
    log.info(run.notes[-1])

    unet, vae = build_models(run)
    anchor, d_vae = None, None
    converted = convert(unet, vae) if args.diffusers else None
    if converted is None:
        run.notes.append("diffusers rows skipped (--no-diffusers, or diffusers is not installed)")
    else:
        d_unet, d_vae, version = converted
        run.notes.append(f"diffusers {version}")
        check_equivalence(unet, vae, d_unet, d_vae, run)
        # the compiled diffusers forms only on a GPU: on the CPU a smoke run checks the rest of the script
        anchor = Anchor(d_unet, args.compile and cuda, compile_options(args.compile_mode))
        d_vae = d_vae.to(torch.bfloat16)
        run.notes.append(anchor.describe())

    schedule = NoiseSchedule.from_spec(ScheduleSpec(linear_start=0.00085, linear_end=0.012))
    side, _ = side_and_context(run)
    pipe = Pipeline(vae, unet, schedule=schedule, scale_factor=0.18215, latent_size=(side, side))
    if args.eager:
        for batch in args.batches:
            bench_pictures(pipe, run, batch // 2, "ldmkit eager fp32")
    run.fast_settings = dict(precision="bf16", channels_last=True, compile=args.compile, cuda_graphs=cuda,
                             compile_mode=args.compile_mode)  # fmt: skip
    pipe.optimize(**run.fast_settings)
    contenders = {batch: bench_batch(unet, pipe, anchor, run, batch) for batch in args.batches}
    for batch in args.timeline_batches:
        bench_timeline(run, batch, contenders.get(batch, {}))
    if anchor is not None and anchor.best is not None:
        from torch._dynamo.utils import counters

        skips = counters["inductor"]["cudagraph_skips"]  # inductor logs why, if it fell back to plain launches
        run.notes.append(f"inductor's CUDA graph skips: {skips} (0: the reduce-overhead form replayed CUDA graphs)")
    bench_vae(vae, d_vae, pipe, run)
    for batch in sorted(args.batches):
        bench_pictures(pipe, run, batch // 2, "ldmkit fast path")
    run.notes.append(f"fast path: {pipe.fast.describe()}")
    for settings in args.ab:
        for batch in args.ab_batches:
            if batch not in contenders:
                run.notes.append(f"A/B at batch {batch} skipped: not among --batches")
            elif run.over_budget():
                run.row("ldmkit fast path, " + ", ".join(f"{k}={v}" for k, v in settings.items()), str(batch), None,
                        extra="time budget")  # fmt: skip
            else:
                bench_ab(unet, pipe, run, batch, settings, contenders[batch])
    run.notes.append(f"total run time {run.elapsed():.0f} s")
    print(run.write())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
