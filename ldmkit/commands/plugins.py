"""``ldmkit plugins``: registered components by kind, plugin commands and models, and plugins that failed to load."""

from __future__ import annotations

import json
import sys

from ldmkit.registry import KIND_NAMES, PluginInfo, get_registry


def add_parser(sub) -> None:
    p = sub.add_parser(
        "plugins",
        help="list plugins and their components",
        description="List registered components by kind, the commands and models plugins add, each with its "
        "plugin and distribution, and failed plugins.",
        epilog="example: ldmkit plugins --json",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def _origin(plugin: PluginInfo) -> dict:
    return {"plugin": plugin.name, "distribution": plugin.distribution, "version": plugin.version}


def listing() -> dict:
    """What ``ldmkit plugins --json`` prints: components, commands, models, plugins and failures."""
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
    commands = [
        {"name": c.name, "help": c.help, **_origin(c.plugin), "class": f"{c.cls.__module__}.{c.cls.__qualname__}"}
        for c in (registry.commands[n] for n in sorted(registry.commands))
    ]
    models = [
        {"name": m.name, "description": m.description, "default": m.default, **_origin(m.plugin)}
        for m in (registry.models[n] for n in sorted(registry.models))
    ]
    plugins = [{"name": p.name, "distribution": p.distribution, "version": p.version} for p in registry.plugins]
    failed = [
        {"name": f.plugin.name, "distribution": f.plugin.distribution, "version": f.plugin.version, "error": f.error}
        for f in registry.failures
    ]
    return {"components": components, "commands": commands, "models": models, "plugins": plugins, "failed": failed}


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
    for title, items in (("commands", data["commands"]), ("models", data["models"])):
        print(f"{title}:")
        for item in items:
            mark = " (default)" if item.get("default") else ""
            print(f"  {item['name']:<20} {item['plugin']} ({item['distribution']} {item['version']}){mark}")
    if data["failed"]:
        print("failed plugins:")
        for f in data["failed"]:
            print(f"  {f['name']} ({f['distribution']} {f['version']}): {f['error']}")
    return 0
