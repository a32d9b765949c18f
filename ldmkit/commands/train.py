"""``ldmkit train SPEC``: train an autoencoder or a latent diffusion model from a train spec."""

from __future__ import annotations

import logging

import yaml

from ldmkit.errors import SpecError

log = logging.getLogger(__name__)

EPILOG = """examples:
  ldmkit train examples/train/tiny-autoencoder.yaml --out-dir runs/ae
  ldmkit train examples/train/tiny-ldm.yaml --set first_stage_weights=runs/ae/first_stage.safetensors
  ldmkit train spec.yaml --resume runs/ae/last.ckpt --max-steps 20000

A run continues from OUT_DIR/last.ckpt when that file exists (use --fresh to start over).
"""


def add_parser(sub) -> None:
    import argparse

    p = sub.add_parser(
        "train",
        help="train an autoencoder or a latent diffusion model",
        description="Train the first stage (stage: autoencoder) or the diffusion model (stage: ldm) described by "
        "a train spec (YAML or JSON). Checkpoints go to OUT_DIR/last.ckpt; the result is exported at the end.",
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
    p.set_defaults(run=run)


def parse_overrides(items: list[str]) -> dict[str, object]:
    """``["optimizer.lr=1e-4", ...]`` -> ``{"optimizer.lr": 0.0001}`` (values parsed as safe YAML)."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise SpecError(f"--set {item!r}: the value is not valid YAML ({' '.join(str(exc).split())})") from None
    return out


def run(args) -> int:
    from ldmkit.training import load_train_spec, train

    overrides = parse_overrides(args.set)
    for key, value in (("out_dir", args.out_dir), ("max_steps", args.max_steps), ("device", args.device)):
        if value is not None:
            overrides[key] = value
    if args.no_progress:
        overrides["progress"] = False
    spec = load_train_spec(args.spec, overrides)
    resume = args.resume if args.resume else (not args.fresh)
    result = train(spec, resume=resume)
    print(f"trained {result.steps} steps; result: {result.export}; checkpoint: {result.checkpoint}")
    return 0
