"""CPU sampling benchmark: the shipped Shapes model, 4 pictures x 50 DDIM steps, against the CPU's matmul peak.

Reports seconds per picture (sampling with the spec's guidance, decode included), the FLOPs of one
picture (counted once with torch's FlopCounterMode), the achieved GFLOP/s and its share of a
measured float32 matrix-product peak of this machine.

    python benchmarks/cpu_sampling.py --out cpu_sampling.md
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
from _common import count_flops, ensure_importable, markdown_table, matmul_peak_tflops  # this folder is on sys.path

log = logging.getLogger("cpu_sampling")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown file for the table")
    parser.add_argument("-n", type=int, default=4, help="pictures per run")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs (the best is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ensure_importable()
    from ldmkit.generation import default_guidance, default_model_dir
    from ldmkit.interfaces import SampleOptions
    from ldmkit.pipeline import Pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = Pipeline.load(default_model_dir())
    task = pipe.task("text2img")
    request = task.Request(prompt="a red circle and a blue square")
    guidance = default_guidance(pipe, "text2img")

    def generate(n: int, steps: int) -> None:
        task.run(pipe, request, SampleOptions(n=n, steps=steps, guidance_scale=guidance))

    # FLOPs of one picture: the conditioner, `steps` guided UNet calls and the decode
    flops_per_picture = count_flops(lambda: generate(1, args.steps))
    generate(args.n, 2)  # warm-up
    best = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        generate(args.n, args.steps)
        best = min(best, time.perf_counter() - t0)
    peak = matmul_peak_tflops(torch.device("cpu"), torch.float32, 2048, repeats=5) * 1e3  # GFLOP/s
    gflops = flops_per_picture * args.n / best / 1e9
    rows = [
        [
            f"{args.n} pictures x {args.steps} DDIM steps, guidance {guidance}, decode",
            f"{best:.2f}",
            f"{best / args.n:.3f}",
            f"{flops_per_picture / 1e9:.2f}",
            f"{gflops:.1f}",
            f"{peak:.1f}",
            f"{100 * gflops / peak:.1f}%",
        ]
    ]
    header = ["run", "s", "s / picture", "GFLOP / picture", "GFLOP/s", "fp32 matmul peak GFLOP/s", "share"]
    text = "\n".join(
        [
            "# CPU sampling benchmark (shipped Shapes model, float32)",
            "",
            markdown_table(header, rows),
            "",
            f"- torch {torch.__version__}, {torch.get_num_threads()} threads; best of {args.repeats} runs",
            "- peak: median of 2048^3 float32 matrix products",
        ]
    )
    print(text)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
