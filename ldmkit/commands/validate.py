"""``ldmkit validate PATH``: check a pipeline spec, a train spec or a pipeline folder, and say which it is."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "validate",
        help="validate a pipeline spec, a train spec or a pipeline folder",
        description="Validate what PATH holds and say which it is: a pipeline spec (YAML or JSON: structure, "
        "registered types, each component's params, the parts of composite components), a train spec (a "
        "document with 'stage', as `ldmkit train` reads it) or a pipeline folder (spec.yaml and weights, "
        "loaded as `ldmkit generate --spec` loads it). Exit 2 with the offending field named.",
        epilog="""examples:
  ldmkit validate examples/specs/txt2img-tiny.yaml
  ldmkit validate examples/train/tiny-ldm.yaml
  ldmkit validate runs/tiny-ldm/pipeline""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("spec", metavar="PATH", help="a pipeline spec, a train spec, or a pipeline folder")
    p.set_defaults(run=run)


def run(args) -> int:
    from ldmkit.spec_checks import describe

    print(describe(args.spec))
    return 0
