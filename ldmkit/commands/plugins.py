"""``ldmkit plugins``: registered components by kind, and plugins that failed to load."""

from __future__ import annotations

import json
import sys

from ldmkit.registry import KIND_NAMES, get_registry


def add_parser(sub) -> None:
    p = sub.add_parser(
        "plugins",
        help="list plugins and their components",
        description="List registered components by kind with their plugin and distribution, and failed plugins.",
        epilog="example: ldmkit plugins --json",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def listing() -> dict:
    registry = get_registry()
    components = {
        kind: [
            {
                "name": info.name,
                "aliases": list(info.aliases),
                "plugin": info.plugin.name,
                "distribution": info.plugin.distribution,
                "version": info.plugin.version,
                "class": f"{info.cls.__module__}.{info.cls.__qualname__}",
            }
            for info in (registry.info(kind, n) for n in registry.names(kind))
        ]
        for kind in KIND_NAMES
    }
    plugins = [{"name": p.name, "distribution": p.distribution, "version": p.version} for p in registry.plugins]
    failed = [
        {"name": f.plugin.name, "distribution": f.plugin.distribution, "version": f.plugin.version, "error": f.error}
        for f in registry.failures
    ]
    return {"components": components, "plugins": plugins, "failed": failed}


def run(args) -> int:
    data = listing()
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for kind, items in data["components"].items():
        print(f"{kind}:")
        for item in items:
            print(f"  {item['name']:<20} {item['plugin']} ({item['distribution']} {item['version']})")
    if data["failed"]:
        print("failed plugins:")
        for f in data["failed"]:
            print(f"  {f['name']} ({f['distribution']} {f['version']}): {f['error']}")
    return 0
