"""``ldmkit schema``: write (or check) the JSON Schemas of specs."""

from __future__ import annotations

from pathlib import Path

from ldmkit.errors import SpecError
from ldmkit.schema import drifted, write_schemas


def add_parser(sub) -> None:
    p = sub.add_parser(
        "schema",
        help="write the JSON Schemas of specs",
        description="Write the JSON Schemas generated from the registered components into a folder.",
        epilog="example: ldmkit schema --out schemas/   |   ldmkit schema --check",
    )
    p.add_argument("--out", default="schemas", help="folder to write into (default: schemas)")
    p.add_argument("--check", action="store_true", help="fail (exit 2) if the files differ from the code")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.check:
        bad = drifted(args.out)
        if bad:
            raise SpecError(f"schemas in {args.out} are out of date: {', '.join(bad)}; run 'ldmkit schema'")
        print(f"{args.out}: up to date")
        return 0
    for path in write_schemas(Path(args.out)):
        print(path)
    return 0
