"""``ldmkit tasks``: the registered tasks and their inputs, as their request models declare them."""

from __future__ import annotations

import json
import sys
from typing import Any

from ldmkit.registry import get_registry


def add_parser(sub) -> None:
    p = sub.add_parser(
        "tasks",
        help="list tasks and their inputs",
        description="List the registered tasks (built-in and from plugins) with their inputs: kind, default "
        "and description, as each task's request model declares them. `ldmkit generate --task NAME` takes "
        "them as --input KEY=VALUE (@PATH for inputs read from a file).",
        epilog="examples:\n  ldmkit tasks\n  ldmkit tasks inpaint\n  ldmkit tasks --json",
    )
    p.add_argument("name", nargs="?", help="one task (default: all)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def describe_task(name: str, registry: Any = None) -> dict[str, Any]:
    """One task's entry of ``ldmkit tasks --json``: name, description, plugin, inputs (unknown name: an error)."""
    from ldmkit.inputs import describe_request

    registry = registry if registry is not None else get_registry()
    info = registry.info("task", name)  # UnknownComponentError with a suggestion
    cls = info.cls
    fields = describe_request(cls.Request)
    reads = cls.input_names() if hasattr(cls, "input_names") else tuple(f.name for f in fields)
    return {
        "name": info.name,
        "description": _first_line(cls.__doc__),
        "plugin": info.plugin.name,
        "distribution": info.plugin.distribution,
        "inputs": [field.as_dict() for field in fields if field.name in reads],
    }


def listing(name: str | None = None) -> list[dict[str, Any]]:
    """What ``ldmkit tasks --json`` prints: every registered task (or the one named) with its inputs."""
    registry = get_registry()
    names = [name] if name is not None else registry.names("task")
    return [describe_task(n, registry) for n in names]


def _usage(field: dict[str, Any]) -> str:
    return f"--input {field['name']}=@PATH" if field["takes_file"] else f"--input {field['name']}=VALUE"


def _print_task(task: dict[str, Any], detailed: bool) -> None:
    print(f"{task['name']}: {task['description']} (plugin {task['plugin']} of {task['distribution']})")
    if not task["inputs"]:
        print("  (no inputs)")
    for field in task["inputs"]:
        need = "required" if field["required"] else f"default {field['default']!r}"
        print(f"  {field['name']:<14} {field['kind']}, {need}: {field['description'] or '(no description)'}")
        if detailed:
            print(f"  {'':<14} {_usage(field)}  ({field['shown_as']})")


def run(args) -> int:
    tasks = listing(args.name)
    if args.json:
        json.dump(tasks if args.name is None else tasks[0], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for task in tasks:
        _print_task(task, detailed=args.name is not None)
    return 0


__all__ = ["describe_task", "listing"]
