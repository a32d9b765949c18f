"""``ldmkit convert``: CompVis checkpoints or diffusers folders -> ldmkit pipeline folders, and ldmkit -> diffusers.

ldmkit convert CONFIG CKPT OUTDIR              an original CompVis config + checkpoint
ldmkit convert --from diffusers DIR OUTDIR     a diffusers pipeline folder
ldmkit convert --to diffusers PIPELINE OUTDIR  an ldmkit pipeline folder, written for diffusers
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ldmkit.errors import SpecError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert CompVis checkpoints or diffusers folders into ldmkit pipeline folders, and back to diffusers",
        description=(
            "Read an original CompVis config and checkpoint safely and write spec.yaml + safetensors; "
            "with --from diffusers read a diffusers folder instead; with --to diffusers write an ldmkit "
            "pipeline folder in diffusers' layout, loadable with DiffusionPipeline.from_pretrained (a conditioner "
            "diffusers cannot represent is left out, with a warning, and kept for --from diffusers). Only "
            "safetensors weights are read from diffusers folders."
        ),
        epilog=(
            "examples:\n  ldmkit convert v1-inference.yaml sd-v1-4.ckpt sd14/ --ema\n"
            "  ldmkit convert --from diffusers stable-diffusion-v1-4/ sd14/\n"
            "  ldmkit convert --to diffusers sd14/ sd14-diffusers/"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="CONFIG CKPT OUTDIR, or SOURCE OUTDIR with --from/--to")
    direction = p.add_mutually_exclusive_group()
    direction.add_argument("--from", dest="source", choices=["compvis", "diffusers"], default="compvis", help="read")
    direction.add_argument("--to", dest="target", choices=["diffusers"], help="write an ldmkit pipeline folder as")
    p.add_argument("--ema", action="store_true", help="take the EMA weights (model_ema.*; CompVis only)")
    p.set_defaults(run=run)


def _paths(args, count: int, names: str) -> list[str]:
    if len(args.paths) != count:
        raise SpecError(f"convert: expected {names}, got {len(args.paths)} path(s)")
    return list(args.paths)


def _report_export(out: Path) -> None:
    """Say which diffusers pipeline was written and what diffusers could not take (the warning itself is logged)."""
    import json

    from ldmkit.diffusers_interop.pipeline import EXPORT_RECORD

    record = json.loads((out / EXPORT_RECORD).read_text(encoding="utf-8"))
    print(f"{out}: written in diffusers' layout as a {record['pipeline']} ({', '.join(sorted(record['components']))})")
    for item in record["left_out"]:
        what = f"{item['component']} {item['type']!r}"
        print(f"{out}: left out {what}; see README.md there (convert --from diffusers restores it)")


def run(args) -> int:
    if args.target == "diffusers" or args.source == "diffusers":
        if args.ema:
            raise SpecError("convert: --ema applies to CompVis checkpoints only")
        from ldmkit import diffusers_interop

        if args.target == "diffusers":
            from ldmkit.pipeline import Pipeline

            source, outdir = _paths(args, 2, "PIPELINE_DIR OUTDIR")
            out = diffusers_interop.to_diffusers(Pipeline.load(source), outdir)
            _report_export(out)
            return 0
        source, outdir = _paths(args, 2, "DIFFUSERS_DIR OUTDIR")
        pipe = diffusers_interop.from_diffusers(source)
    else:
        from ldmkit import compvis

        config, ckpt, outdir = _paths(args, 3, "CONFIG CKPT OUTDIR")
        pipe = compvis.load(config, ckpt, ema=args.ema)
    out = pipe.save(Path(outdir))
    print(f"{out}: written ({', '.join(pipe.modules())})")
    return 0
