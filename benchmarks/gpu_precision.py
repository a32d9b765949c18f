"""How far the fast path's UNet output lies from float32, per precision, and its ms per call.

The SD v1 UNet with random weights (as in gpu_sampling.py), the fast path as samplers call it
(channels_last, torch.compile, CUDA graphs), against the float32 module with TF32 off.

    python benchmarks/gpu_precision.py --precisions bf16,fp16 --batches 2,16
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from _common import ensure_importable, randomize_zeroed, rel_err, time_ms  # this folder is on sys.path

log = logging.getLogger("gpu_precision")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default="bf16,fp16")
    parser.add_argument("--batches", default="2,16")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ensure_importable()
    from gpu_sampling import SD_UNET, SD_VAE

    from ldmkit import Conditioning, NoiseSchedule, Pipeline, ScheduleSpec
    from ldmkit_autoencoders.kl import KLAutoencoder
    from ldmkit_unet.unet import UNet

    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # a float32 reference
    torch.manual_seed(0)
    unet = UNet.from_params(SD_UNET)
    randomize_zeroed(unet)
    unet = unet.eval().to(device)
    vae = KLAutoencoder.from_params(SD_VAE).eval().to(device)
    schedule = NoiseSchedule.from_spec(ScheduleSpec())
    pipe = Pipeline(vae, unet, schedule=schedule, scale_factor=0.18215, latent_size=(64, 64))
    rows = []
    for precision in args.precisions.split(","):
        torch._dynamo.reset()
        pipe.optimize(precision=precision, channels_last=True, compile=True, cuda_graphs=True)
        for batch in (int(b) for b in args.batches.split(",")):
            g = torch.Generator(device=device).manual_seed(batch)
            x = torch.randn(batch, 4, 64, 64, device=device, generator=g)
            t = torch.full((batch,), 500, device=device, dtype=torch.long)
            cond = Conditioning(crossattn=torch.randn(batch, 77, 768, device=device, generator=g))
            fn = pipe.fast.denoiser.model_fn(pipe.schedule.alphas_cumprod, cond, None, 1.0)
            with torch.no_grad():
                t0 = time.perf_counter()
                out = fn(x, t)
                torch.cuda.synchronize(device)
                first = time.perf_counter() - t0
                err = rel_err(out, unet(x, t, cond))
            ms = time_ms(lambda fn=fn, x=x, t=t: fn(x, t), device, warmup=5, repeats=20)
            rows.append(f"| {precision} | {batch} | {err:.3e} | {ms:.2f} | {first:.0f} |")
            log.info(rows[-1])
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    print("| precision | batch | rel. error vs fp32 | ms per call | first call s |\n| --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
