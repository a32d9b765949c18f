"""``ldmkit convert CONFIG CKPT OUTDIR``: an original CompVis checkpoint as an ldmkit pipeline folder."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a CompVis config + checkpoint into an ldmkit pipeline folder",
        description="Read an original CompVis config and checkpoint safely and write spec.yaml + safetensors.",
        epilog="example: ldmkit convert v1-inference.yaml sd-v1-4.ckpt sd14/ --ema",
    )
    p.add_argument("config", help="original model config (YAML)")
    p.add_argument("ckpt", help="original checkpoint (.ckpt pickle or .safetensors)")
    p.add_argument("outdir", help="folder to write")
    p.add_argument("--ema", action="store_true", help="take the EMA weights (model_ema.*)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ldmkit import compvis

    pipe = compvis.load(args.config, args.ckpt, ema=args.ema)
    out = pipe.save(Path(args.outdir))
    print(f"{out}: written ({', '.join(pipe.modules())})")
    return 0
