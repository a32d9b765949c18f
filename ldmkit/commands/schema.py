"""``ldmkit schema``: write (or check) the JSON Schemas of specs.

By default the schemas describe the built-in plugins only (the checked-in files, the same on every
machine); ``--installed`` describes whatever plugins are installed, for an editor to validate specs
that use third-party components.
"""

from __future__ import annotations

from pathlib import Path

from ldmkit.errors import SpecError
from ldmkit.schema import builtin_registry, drifted, write_schemas


def add_parser(sub) -> None:
    p = sub.add_parser(
        "schema",
        help="write the JSON Schemas of specs",
        description="Write the JSON Schemas generated from the built-in components (or, with --installed, "
        "from every installed plugin's components) into a folder.",
        epilog="example: ldmkit schema --out schemas/   |   ldmkit schema --check   |   "
        "ldmkit schema --installed --out my-schemas/",
    )
    p.add_argument("--out", default=None, help="folder to write into (default: schemas, or with --installed: .)")
    p.add_argument("--check", action="store_true", help="fail (exit 2) if the files differ from the code")
    p.add_argument(
        "--installed",
        action="store_true",
        help="describe every installed plugin's components, not only the built-in ones",
    )
    p.set_defaults(run=run)


def run(args) -> int:
    if args.installed:
        from ldmkit.registry import get_registry

        registry = get_registry()
        out = Path(args.out or ".")
    else:
        registry = builtin_registry()
        out = Path(args.out or "schemas")
    if args.check:
        bad = drifted(out, registry)
        if bad:
            again = "ldmkit schema --installed" if args.installed else "ldmkit schema"
            raise SpecError(f"schemas in {out} are out of date: {', '.join(bad)}; run '{again}'")
        print(f"{out}: up to date")
        return 0
    for path in write_schemas(out, registry):
        print(path)
    return 0
