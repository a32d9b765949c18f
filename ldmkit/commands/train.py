"""``ldmkit train SPEC``: train an autoencoder or a latent diffusion model from a train spec."""

from __future__ import annotations

import logging

from ldmkit.errors import SpecError

log = logging.getLogger(__name__)

EPILOG = """examples:
  ldmkit train examples/train/tiny-autoencoder.yaml --out-dir runs/ae
  ldmkit train examples/train/tiny-ldm.yaml --set first_stage_weights=runs/ae/first_stage.safetensors
  ldmkit train spec.yaml --resume runs/ae/last.ckpt --max-steps 20000
  ldmkit train examples/train/shapes-lora.yaml   (a LoRA of the shipped Shapes model, on the CPU)
  ldmkit train spec.yaml --nproc 2          (or: torchrun --nproc-per-node 2 -m ldmkit.cli train spec.yaml)

A run continues from OUT_DIR/last.ckpt when that file exists (use --fresh to start over).
"""


def add_parser(sub) -> None:
    import argparse

    p = sub.add_parser(
        "train",
        help="train an autoencoder, a latent diffusion model or a LoRA of one",
        description="Train the first stage (stage: autoencoder), the diffusion model (stage: ldm) or a LoRA of a "
        "trained model (stage: lora) described by a train spec (YAML or JSON). Checkpoints go to "
        "OUT_DIR/last.ckpt; the result is exported at the end.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("spec", help="path to a YAML or JSON train spec")
    p.add_argument("--out-dir", help="override out_dir")
    p.add_argument("--max-steps", type=int, help="override max_steps")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override device")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any field by its dotted name; VALUE is read as YAML (repeatable)",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", metavar="PATH", help="resume from this checkpoint instead of OUT_DIR/last.ckpt")
    group.add_argument("--fresh", action="store_true", help="ignore an existing OUT_DIR/last.ckpt and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train in N local processes (one per GPU on CUDA); the same as launching with torchrun",
    )
    p.set_defaults(run=run)


def parse_overrides(items: list[str]) -> dict[str, object]:
    """``["optimizer.lr=1e-4", ...]`` -> ``{"optimizer.lr": 0.0001}`` (values parsed as safe YAML)."""
    from ldmkit.specs import parse_value

    out: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = parse_value(text, f"--set {key.strip()}") if text.strip() else None
    return out


def _child_argv(args) -> list[str]:
    """The ``ldmkit`` arguments each launched process runs: this command without ``--nproc``."""
    argv = ["-v"] if getattr(args, "verbose", False) else []
    argv += ["train", args.spec]
    for flag, value in (("--out-dir", args.out_dir), ("--max-steps", args.max_steps), ("--device", args.device)):
        if value is not None:
            argv += [flag, str(value)]
    for item in args.set:
        argv += ["--set", item]
    if args.resume:
        argv += ["--resume", args.resume]
    if args.fresh:
        argv.append("--fresh")
    if args.no_progress:
        argv.append("--no-progress")
    return argv


def run(args) -> int:
    import os

    from ldmkit.training import load_train_spec, train

    if args.nproc is not None:
        from ldmkit.training.distributed import launch

        if args.nproc < 1:
            raise SpecError(f"--nproc {args.nproc}: expected at least 1 process")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise SpecError("--nproc: this process was already launched by torchrun; leave --nproc out")
        if args.nproc > 1:
            load_train_spec(args.spec, parse_overrides(args.set))  # a bad spec fails here, not in N processes
            return launch(_child_argv(args), args.nproc)
    overrides = parse_overrides(args.set)
    for key, value in (("out_dir", args.out_dir), ("max_steps", args.max_steps), ("device", args.device)):
        if value is not None:
            overrides[key] = value
    if args.no_progress:
        overrides["progress"] = False
    spec = load_train_spec(args.spec, overrides)
    resume = args.resume if args.resume else (not args.fresh)
    result = train(spec, resume=resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(f"trained {result.steps} steps; result: {result.export}; checkpoint: {result.checkpoint}")
    return 0
