"""Training throughput of a GPU-filling latent diffusion UNet on 1 vs 2 GPUs (DDP), and the scaling efficiency.

    python benchmarks/gpu_ddp_scaling.py [--batch-per-gpu 32] [--steps 30] [--channels 320] [--strategies ddp,fsdp]
                                         [--bucket-mb 25]

Each run is a real ``ldmkit train`` (torchrun when 2 GPUs) on Shapes pictures (64x64, preloaded so
rendering is not the bottleneck) in the 32x32 latents of an untrained f=2 KL autoencoder, bf16;
the 2-GPU run uses twice the global batch so each GPU holds the same load.
Speed-up = images/s on 2 GPUs / images/s on 1 GPU (the goal is 1.85x or more).
Without two CUDA devices it says so and exits 0.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

log = logging.getLogger("gpu_ddp_scaling")


def train_spec(
    out_dir: Path, batch: int, steps: int, channels: int, strategy: str = "ddp", bucket_mb: float = 25.0
) -> dict:
    """A UNet of about SD size at ``channels`` model channels, on 32x32x4 latents."""
    first_stage = {
        "type": "kl-autoencoder",
        "params": {
            "embed_dim": 4,
            "z_channels": 4,
            "resolution": 64,
            "ch": 32,
            "ch_mult": [1, 2],
            "num_res_blocks": 1,
            "attn_resolutions": [],
        },
    }
    return {
        "version": 1,
        "stage": "ldm",
        "dataset": {"type": "shapes", "params": {"seed": 0, "size": 100000}, "preload": 4096},
        "pipeline": {
            "first_stage": first_stage,
            "denoiser": {
                "type": "unet",
                "params": {
                    "image_size": 32,
                    "in_channels": 4,
                    "out_channels": 4,
                    "model_channels": channels,
                    "channel_mult": [1, 2, 4, 4],
                    "num_res_blocks": 2,
                    "attention_resolutions": [4, 2, 1],
                    "num_head_channels": 64,
                },
            },
            "schedule": {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000},
        },
        "batch_size": batch,
        "max_steps": steps,
        "checkpoint_every": 10**9,
        "log_every": 1,
        "precision": "bf16",
        "device": "cuda",
        "progress": False,
        "out_dir": str(out_dir),
        "distributed": {"strategy": strategy} | ({"bucket_cap_mb": bucket_mb} if strategy == "ddp" else {}),
    }


def images_per_s(out_dir: Path, skip: int) -> float:
    """Median logged throughput after ``skip`` warm-up steps."""
    with (out_dir / "log.csv").open() as fh:
        rates = sorted(float(row["images_per_s"]) for row in csv.DictReader(fh) if int(row["step"]) > skip)
    if not rates:
        raise SystemExit(f"{out_dir}: no steps after the warm-up; raise --steps")
    return rates[len(rates) // 2]


def run(nproc: int, spec: dict, work: Path) -> float:
    path = work / f"spec-{nproc}.yaml"
    path.write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-m", "ldmkit.cli", "train", str(path), "--fresh"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    log.info("running: %s", " ".join(cmd))
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "4"})
    return images_per_s(Path(spec["out_dir"]), skip=5)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-per-gpu", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--channels", type=int, default=320, help="UNet model_channels (320 is SD v1's)")
    parser.add_argument("--strategies", default="ddp", help="comma-separated: ddp, fsdp")
    parser.add_argument("--bucket-mb", type=float, default=25.0, help="DDP gradient bucket size (MB)")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        log.info("skipped: needs 2 CUDA devices, found %d", found)
        return 0
    name = torch.cuda.get_device_name(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        one = run(1, train_spec(work / "one", args.batch_per_gpu, args.steps, args.channels), work)
        rows.append(f"| 1 x {name} | - | {args.batch_per_gpu} | {one:.1f} | - |")
        for strategy in args.strategies.split(","):
            spec = train_spec(
                work / strategy, 2 * args.batch_per_gpu, args.steps, args.channels, strategy, args.bucket_mb
            )
            two = run(2, spec, work)
            speedup = two / one
            label = f"{strategy} (buckets {args.bucket_mb:g} MB)" if strategy == "ddp" else strategy
            rows.append(f"| 2 x {name} | {label} | {2 * args.batch_per_gpu} | {two:.1f} | {speedup:.2f}x |")
    log.info("| GPUs | strategy | global batch | images/s | speed-up over 1 GPU |")
    log.info("| --- | --- | --- | --- | --- |")
    for row in rows:
        log.info(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
