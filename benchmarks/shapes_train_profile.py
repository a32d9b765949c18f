"""Where one training step of the shipped Shapes LDM spends its time: host vs GPU, and batch fetching.

    python benchmarks/shapes_train_profile.py [--batch 512] [--preload 8192]

Builds the LDM stage of ``examples/shapes/ldm.yaml`` on CUDA with the samples preloaded on the GPU,
times 20 steps after 10 warm-up steps, times 20 batch fetches alone, then prints torch.profiler
tables of 5 steps (CPU time and CUDA time per operator). Needs the autoencoder weights the spec
names (``first_stage_weights``); pass another file with ``--first-stage``.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from _common import ensure_importable  # this folder is on sys.path

log = logging.getLogger("shapes_train_profile")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="examples/shapes/ldm.yaml")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--preload", type=int, default=8192)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--first-stage", default=None, help="first_stage_weights to use instead of the spec's")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not torch.cuda.is_available():
        log.info("skipped: needs a CUDA device")
        return 0
    ensure_importable()
    from torch.profiler import ProfilerActivity, profile

    from ldmkit.training.data import Preloaded, batches, build_dataset
    from ldmkit.training.loop import make_stage
    from ldmkit.training.spec import load_train_spec

    device = torch.device("cuda")
    overrides = {"batch_size": args.batch}
    if args.first_stage:
        overrides["first_stage_weights"] = args.first_stage
    spec = load_train_spec(args.spec, overrides)
    data = Preloaded(build_dataset(spec.dataset), args.preload, args.workers, device)
    stage = make_stage(spec, device)
    stream = batches(data, spec.batch_size, 0, 0, 10**6)
    stage.on_start(next(stream))
    for step in range(10):
        stage.train_step(next(stream), step)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for step in range(10, 30):
        stage.train_step(next(stream), step)
    torch.cuda.synchronize()
    log.info("step: %.1f ms (batch %d, %s)", (time.perf_counter() - t0) / 20 * 1e3, args.batch, spec.precision)
    t0 = time.perf_counter()
    for _ in range(20):
        next(stream)
    log.info("batch fetch: %.2f ms", (time.perf_counter() - t0) / 20 * 1e3)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for step in range(50, 55):
            stage.train_step(next(stream), step)
        torch.cuda.synchronize()
    table = prof.key_averages()
    print(table.table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=60))
    print(table.table(sort_by="device_time_total", row_limit=15, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
