"""Render ``docs/reference/specs.md`` from the JSON Schemas in ``schemas/``.

The page lists the pipeline spec's fields, then every registered component's ``params`` (one table
per component, from ``schemas/pipeline.schema.json``), then the training spec's sections (from
``schemas/train.schema.json``). ``ldmkit schema`` regenerates the schemas from the code; run this
script after it. ``tests/test_docs.py`` fails when the committed page differs from what this renders.

    python scripts/make_specs_reference.py            # write the page
    python scripts/make_specs_reference.py --check    # exit 1 if the page is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
PAGE = ROOT / "docs" / "reference" / "specs.md"
COMPONENT_SLOTS = ("first_stage", "denoiser", "conditioner")
SLOT_TITLES = {"first_stage": "First stages", "denoiser": "Denoisers", "conditioner": "Conditioners"}
CONSTRAINTS = (
    ("minimum", ">= {}"),
    ("exclusiveMinimum", "> {}"),
    ("maximum", "<= {}"),
    ("exclusiveMaximum", "< {}"),
    ("minLength", "at least {} characters"),
    ("maxLength", "at most {} characters"),
    ("minItems", "at least {} items"),
    ("maxItems", "at most {} items"),
)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _anchor(name: str) -> str:
    return name.lower()


def type_of(schema: dict[str, Any], global_defs: set[str]) -> str:
    """A short human form of a JSON Schema type, e.g. ``list[int]``, ``"a" | "b"``, ``float | null``."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{_anchor(name)})" if name in global_defs else f"`{name}`"
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return " | ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " | ".join(type_of(s, global_defs) for s in schema[key])
    kind = schema.get("type")
    if kind is None and schema.get("title") == "component":
        return "`{type, params}`"
    if kind == "array":
        items = schema.get("items")
        inner = type_of(items, global_defs) if isinstance(items, dict) else "any"
        return f"list[{inner}]"
    if kind == "object":
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            return f"map[str, {type_of(extra, global_defs)}]"
        return "mapping"
    names = {"integer": "int", "number": "float", "string": "str", "boolean": "bool", "null": "null"}
    if isinstance(kind, list):
        return " | ".join(names.get(k, k) for k in kind)
    return names.get(kind, "any") if kind else "any"


def constraints_of(schema: dict[str, Any]) -> list[str]:
    """Bounds on a value, on its items, or on any branch of a union."""
    out = [fmt.format(schema[key]) for key, fmt in CONSTRAINTS if key in schema]
    items = schema.get("items")
    if isinstance(items, dict):
        out += [f"each {c}" for c in constraints_of(items)]
    for branch in schema.get("anyOf", []):
        out += constraints_of(branch)
    return out


def field_table(schema: dict[str, Any], global_defs: set[str]) -> list[str]:
    """A Markdown table of an object schema's properties (name, type, default, constraints, meaning)."""
    props = schema.get("properties", {})
    if not props:
        return ["No parameters.", ""]
    required = set(schema.get("required", []))
    lines = ["| field | type | default | constraints | description |", "| --- | --- | --- | --- | --- |"]
    for name, prop in props.items():
        default = "*required*" if name in required else f"`{json.dumps(prop['default'])}`" if "default" in prop else ""
        lines.append(
            f"| `{name}` | {_cell(type_of(prop, global_defs))} | {_cell(default)} "
            f"| {_cell(', '.join(constraints_of(prop)))} | {_cell(prop.get('description', ''))} |"
        )
    return lines + [""]


def _description(schema: dict[str, Any]) -> list[str]:
    text = schema.get("description", "").strip()
    return [" ".join(text.split()), ""] if text else []


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """``schema`` itself, or the ``$defs`` entry it refers to."""
    if "$ref" in schema:
        return defs[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _refs_in(schema: Any) -> set[str]:
    """Names of the ``$defs`` entries that ``schema`` refers to directly."""
    if isinstance(schema, dict):
        found = {schema["$ref"].rsplit("/", 1)[-1]} if "$ref" in schema else set()
        return found.union(*(_refs_in(v) for v in schema.values()))
    if isinstance(schema, list):
        return set().union(*(_refs_in(v) for v in schema))
    return set()


def _reachable(names: set[str], defs: dict[str, Any]) -> set[str]:
    seen: set[str] = set()
    todo = set(names)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo |= _refs_in(defs[name]) - seen
    return seen


def _component_variants(prop: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-component variants of a slot (``oneOf``, possibly inside ``anyOf`` with null)."""
    if "oneOf" in prop:
        return prop["oneOf"]
    for branch in prop.get("anyOf", []):
        if "oneOf" in branch:
            return branch["oneOf"]
        if "$ref" in branch:  # a slot with a single registered component
            return [branch]
    return [prop] if "$ref" in prop else []


def render_pipeline(schema: dict[str, Any]) -> list[str]:
    defs = schema.get("$defs", {})
    top = {k: v for k, v in schema["properties"].items() if k not in COMPONENT_SLOTS}
    shared = _reachable(_refs_in(top), defs)  # the spec's own sections, listed once
    variants = {slot: _component_variants(schema["properties"][slot]) for slot in COMPONENT_SLOTS}
    lines = ["## Pipeline spec", ""] + _description(schema)
    slots = {
        k: {
            "title": "component",
            "description": f"a registered {k.replace('_', ' ')} and its params (see [below](#{k.replace('_', '-')}s))",
        }
        | ({"default": None} if k == "conditioner" else {})
        for k in COMPONENT_SLOTS
    }
    table_schema = {"properties": {**slots, **top}, "required": schema.get("required", [])}
    lines += field_table(table_schema, shared)
    for name in sorted(shared):
        lines += [f"### {name}", ""] + _description(defs[name]) + field_table(defs[name], shared)
    for slot in COMPONENT_SLOTS:
        lines += [f"## {SLOT_TITLES[slot]}", ""]
        lines += [f"Each is written `{slot}: {{type: NAME, params: {{...}}}}`.", ""]
        for ref in variants[slot]:
            variant = _resolve(ref, defs)
            name = variant["properties"]["type"]["const"]
            params_ref = variant["properties"]["params"]
            params = _resolve(params_ref, defs)
            own = _reachable(_refs_in(params), defs) - shared
            lines += [f"### {slot}: `{name}`", ""] + _description(variant) + field_table(params, shared)
            for local in sorted(own):
                sub = defs[local]
                lines += [f"#### {name}: `{local}`", ""] + _description(sub) + field_table(sub, shared)
    return lines


def render_train(schema: dict[str, Any], skip: set[str]) -> list[str]:
    defs = schema.get("$defs", {})
    global_defs = set(defs)
    roots = [ref["$ref"].rsplit("/", 1)[-1] for ref in schema.get("anyOf", []) if "$ref" in ref]
    lines = ["## Training spec", ""]
    lines += [
        "A training spec is one of " + ", ".join(f"[{r}](#{_anchor(r)})" for r in roots) + ".",
        "The sections shared with the pipeline spec are described above.",
        "",
    ]
    for name in roots + sorted(set(defs) - set(roots) - skip):
        lines += [f"### {name}", ""] + _description(defs[name]) + field_table(defs[name], global_defs)
    return lines


def render(schemas_dir: Path = SCHEMAS) -> str:
    """The whole page, from the schema files in ``schemas_dir``."""
    pipeline = json.loads((schemas_dir / "pipeline.schema.json").read_text())
    lines = [
        "# Spec reference",
        "",
        "<!-- generated by scripts/make_specs_reference.py from schemas/*.json; do not edit -->",
        "",
        "Every field of a pipeline spec and every registered component's `params`, generated from",
        "`schemas/pipeline.schema.json` and `schemas/train.schema.json` (which `ldmkit schema` writes from",
        "the installed plugins). See [Pipeline specs](../specs.md) for how specs are written and checked.",
        "",
    ]
    lines += render_pipeline(pipeline)
    train_path = schemas_dir / "train.schema.json"
    if train_path.is_file():
        lines += render_train(json.loads(train_path.read_text()), skip=set(pipeline.get("$defs", {})))
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page differs from the schemas")
    parser.add_argument("--schemas", type=Path, default=SCHEMAS, help="folder of the schema files")
    parser.add_argument("--out", type=Path, default=PAGE, help="the page to write or check")
    args = parser.parse_args(argv)
    text = render(args.schemas)
    if args.check:
        if not args.out.is_file() or args.out.read_text() != text:
            sys.stderr.write(f"{args.out} is out of date: run python scripts/make_specs_reference.py\n")
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
