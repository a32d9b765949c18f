"""``ldmkit validate SPEC``: check a pipeline spec without building it."""

from __future__ import annotations

from ldmkit.specs import load_spec


def add_parser(sub) -> None:
    p = sub.add_parser(
        "validate",
        help="validate a pipeline spec",
        description="Validate a pipeline spec (YAML or JSON): structure, registered types, each component's params.",
        epilog="example: ldmkit validate examples/specs/txt2img-tiny.yaml",
    )
    p.add_argument("spec", help="path to a YAML or JSON spec")
    p.set_defaults(run=run)


def run(args) -> int:
    spec = load_spec(args.spec)
    parts = ", ".join(f"{k}={v.type}" for k, v in spec.components().items())
    print(f"{args.spec}: valid ({parts})")
    return 0
