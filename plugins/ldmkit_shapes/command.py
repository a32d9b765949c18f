"""``ldmkit bench shapes``: the shipped model's fidelity on every task, and its CPU speed.

Registered through the ``register_commands`` hook; the benchmark itself (and torch) loads only when it runs.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from ldmkit.commands import Command


class BenchCommand(Command):
    """``ldmkit bench shapes``: generate pictures for every task from held-out scenes and score them by parsing."""

    name = "bench"
    help = "fidelity benchmark of a Shapes pipeline"
    description = "Generate pictures for every task from held-out Shapes scenes and score them by parsing."
    epilog = "example: ldmkit bench shapes -n 64 --steps 50"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The suite (``shapes``), the pipeline, the scenes per task, sampling overrides and outputs."""
        p = parser
        p.add_argument("suite", choices=["shapes"], help="benchmark suite")
        p.add_argument("--spec", help="pipeline folder (default: the shipped model)")
        p.add_argument("-n", type=int, default=64, help="scenes per task (default 64)")
        p.add_argument("--steps", type=int, default=None, help="default: each task's, else the spec's")
        p.add_argument("--sampler", default=None, help="default: each task's, else the spec's")
        p.add_argument("--guidance", type=float, default=None, help="default: the spec's")
        p.add_argument("--tasks", default=None, help="comma-separated subset of tasks")
        p.add_argument("--device", default="cpu", help="cpu or cuda")
        p.add_argument("--json", dest="json_out", help="also write the rows as JSON to this file")
        p.add_argument("--no-timing", action="store_true", help="skip the speed measurement (4 pictures, 50 steps)")

    def run(self, args: argparse.Namespace) -> int:
        """Print the benchmark table (and the time of 4 pictures of 50 steps); write JSON if asked."""
        from ldmkit.errors import InputError
        from ldmkit.generation import open_pipeline
        from ldmkit_shapes.bench import format_table, run_bench, time_generation

        if args.n < 1:
            raise InputError("-n must be at least 1")
        if args.steps is not None and args.steps < 1:
            raise InputError(f"--steps {args.steps}: expected at least 1")
        pipe, model = open_pipeline(args.spec)
        pipe.to(args.device)
        tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
        rows = run_bench(pipe, n=args.n, steps=args.steps, sampler=args.sampler, guidance=args.guidance, tasks=tasks)
        print(format_table(rows))
        seconds = None
        if not args.no_timing:
            seconds = time_generation(pipe, n=4, steps=50)
            print(f"\n4 pictures, 50 DDIM steps on {args.device}: {seconds:.2f} s")
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump({"rows": [asdict(r) for r in rows], "seconds_4x50": seconds, "model": model}, f, indent=2)
        return 0


__all__ = ["BenchCommand"]
