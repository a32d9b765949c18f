"""Spec safety as properties: any input ends in a valid PipelineSpec or a SpecError naming a location.

Generated documents, mutations of a valid spec and hostile YAML text go through the real parser
and validator with the built-in components. Nothing a spec says may import a module.
"""

from __future__ import annotations

import copy
import datetime
import importlib.abc
import re
import sys
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny import TINY_SPEC

from ldmkit import get_registry
from ldmkit.errors import SpecError
from ldmkit.specs import PipelineSpec, dump_spec, parse_document, validate_spec

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MADE_UP = "ldmkit_madeup_mod"  # a module that must never even be looked for

VALID: dict[str, Any] = {
    "version": 1,
    **{k: v for k, v in TINY_SPEC.items() if k not in ("latent_size", "tasks")},
    "schedule": {"beta_schedule": "linear", "linear_start": 0.0015, "linear_end": 0.0195, "timesteps": 1000},
    "scale_factor": 0.5,
    "latent_size": [8, 8],
    "sampling": {"sampler": "ddim", "steps": 20, "eta": 0.0, "guidance_scale": 2.0},
    "tasks": {"class2img": {"type": "class2img", "params": {"class_names": ["a", "b"]}}},
}


class _ImportRecorder(importlib.abc.MetaPathFinder):
    """Records every attempt to find a module whose name mentions MADE_UP."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def find_spec(self, fullname, path=None, target=None):
        if MADE_UP in fullname:
            self.seen.append(fullname)
        return None


@pytest.fixture(scope="module", autouse=True)
def import_recorder():
    get_registry()  # discover the built-ins once, outside the properties
    recorder = _ImportRecorder()
    sys.meta_path.insert(0, recorder)
    yield recorder
    sys.meta_path.remove(recorder)
    assert recorder.seen == [], f"a spec made ldmkit look for {recorder.seen}"
    assert not [m for m in sys.modules if MADE_UP in m]


def _assert_outcome(data: Any, must_name: str | None = None) -> PipelineSpec | None:
    """validate_spec gives a PipelineSpec or a SpecError whose message names where the problem is."""
    try:
        return validate_spec(data, source="spec")
    except SpecError as exc:
        message = str(exc)
        assert re.match(r"spec: \S.*: \S", message, re.DOTALL), message  # "spec: <location>: <problem>"
        if must_name is not None:
            assert must_name in message or "(top level)" in message, (must_name, message)
        return None


# -- strategies -------------------------------------------------------------------------------------

KEYS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-0123456789", min_size=1, max_size=12)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.binary(max_size=8)
    | st.dates()
    | st.datetimes()
    | st.sampled_from(["kl-autoencoder", "unet", "class-embedder", "ddim", f"{MADE_UP}.Thing", f"{MADE_UP}:X"])
)
# what a safe YAML loader can produce: scalars, bytes, dates, lists, mappings (also with non-text keys)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(KEYS | st.integers() | st.booleans(), inner, max_size=4)
        | st.frozensets(st.integers(), max_size=3)
    ),
    max_leaves=12,
)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into nested dicts and lists of ``doc``."""
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append(prefix + (k,))
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.append(prefix + (i,))
            out += _paths(v, prefix + (i,))
    return out


VALID_PATHS = _paths(VALID)


def _at(doc: Any, path: tuple) -> Any:
    for part in path:
        doc = doc[part]
    return doc


DICT_PATHS = [()] + [p for p in VALID_PATHS if isinstance(_at(VALID, p), dict)]


# -- properties -------------------------------------------------------------------------------------


def test_the_base_spec_is_valid() -> None:
    spec = validate_spec(copy.deepcopy(VALID))
    assert validate_spec(parse_document(dump_spec(spec))) == spec


@SETTINGS
@given(VALUES)
def test_any_document_is_a_spec_or_a_located_spec_error(data: Any) -> None:
    _assert_outcome(data)


@SETTINGS
@given(st.dictionaries(KEYS | st.sampled_from(list(VALID)), VALUES, max_size=8))
def test_any_mapping_with_spec_keys(data: dict) -> None:
    _assert_outcome(data)


@SETTINGS
@given(st.sampled_from(VALID_PATHS), VALUES)
def test_replacing_any_value(path: tuple, value: Any) -> None:
    doc = copy.deepcopy(VALID)
    _at(doc, path[:-1])[path[-1]] = value
    _assert_outcome(doc, must_name=str(path[0]))


@SETTINGS
@given(st.sampled_from(VALID_PATHS))
def test_deleting_any_field(path: tuple) -> None:
    doc = copy.deepcopy(VALID)
    del _at(doc, path[:-1])[path[-1]]
    _assert_outcome(doc, must_name=str(path[0]))


@SETTINGS
@given(st.sampled_from(DICT_PATHS), KEYS | st.integers(), VALUES)
def test_adding_any_key(path: tuple, key: Any, value: Any) -> None:
    doc = copy.deepcopy(VALID)
    target = _at(doc, path)
    if key in target:
        return
    target[key] = value
    _assert_outcome(doc, must_name=str(path[0]) if path else str(key))


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(VALID_PATHS), VALUES), min_size=2, max_size=5))
def test_several_mutations_at_once(edits: list) -> None:
    doc = copy.deepcopy(VALID)
    for path, value in edits:
        try:
            _at(doc, path[:-1])[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit replaced the parent
    _assert_outcome(doc)


# -- YAML text ----------------------------------------------------------------------------------------

BASE_YAML = dump_spec(validate_spec(copy.deepcopy(VALID))).splitlines()
FRAGMENTS = [
    f"x: !!python/object/apply:{MADE_UP}.run [1]",
    f"x: !!python/name:{MADE_UP}.thing ''",
    f"x: !!python/module:{MADE_UP} ''",
    f"type: !!python/object/new:{MADE_UP}.Cls {{}}",
    "x: !custom 3",
    "x: !!binary aGVsbG8=",
    "x: !!set {a, b}",
    "x: !!timestamp 2001-12-14t21:59:43.10-05:00",
    "x: !!omap [a: 1, b: 2]",
    "x: !!float nan",
    "x: &anchor [1, 2]",
    "y: *anchor",
    "z: *undefined",
    "r: &r [*r]",
    "<<: {merged: 1}",
    "<<: *anchor",
    "? [complex, key]\n: 1",
    "first_stage: {type: unet}",
    "denoiser: duplicate",
    "version: 1",
    "%YAML 1.1\n---",
    "--- second document",
    "\t tab: indented",
    "key: 'unterminated",
    "key: [unclosed",
    "- list item",
    f"target: {MADE_UP}.Model",
    "params: {ch_mult: &m [1, *m]}",
]


@pytest.mark.parametrize(
    "line",
    [
        "x: !!timestamp 2001-12-14t21:59:43.10-05:00 - a - b",
        "x: !!timestamp yesterday",
        "x: !!bool maybe",
        "x: !!int 12abc",
        "x: !!float one",
        "x: !!binary not-base64!",
    ],
)
def test_explicit_tags_on_odd_text_are_spec_errors(line: str) -> None:
    with pytest.raises(SpecError, match="^tagged.yaml: "):
        parse_document("\n".join([*BASE_YAML, line]), "tagged.yaml")


@SETTINGS
@given(st.data())
def test_yaml_text_with_hostile_lines(data) -> None:
    lines = list(BASE_YAML)
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.integers(0, len(lines)))
        indent = data.draw(st.sampled_from(["", "  ", "    "]))
        fragment = data.draw(st.sampled_from(FRAGMENTS) | st.text(max_size=30))
        lines.insert(where, indent + fragment)
    text = "\n".join(lines)
    try:
        doc = parse_document(text, "fuzz.yaml")
    except SpecError as exc:
        assert str(exc).startswith("fuzz.yaml: "), str(exc)
        return
    _assert_outcome(doc)


@SETTINGS
@given(st.text(max_size=200))
def test_any_text_parses_to_a_mapping_or_a_located_error(text: str) -> None:
    try:
        doc = parse_document(text, "any.yaml")
    except SpecError as exc:
        assert str(exc).startswith("any.yaml: "), str(exc)
        return
    assert isinstance(doc, dict)
    _assert_outcome(doc)


@pytest.mark.parametrize("slot", ["first_stage", "denoiser", "conditioner"])
@pytest.mark.parametrize("name", [f"{MADE_UP}.Thing", f"{MADE_UP}:Thing", f"{MADE_UP}", f"{MADE_UP}/x"])
def test_made_up_module_as_type_is_never_imported(slot: str, name: str, import_recorder) -> None:
    doc = copy.deepcopy(VALID)
    doc[slot]["type"] = name
    before = set(sys.modules)
    with pytest.raises(SpecError, match=f"{slot}.type"):
        validate_spec(doc)
    assert import_recorder.seen == []
    assert not [m for m in set(sys.modules) - before if MADE_UP in m]


def test_made_up_module_in_every_other_name_field(import_recorder) -> None:
    for path in [("sampling", "sampler"), ("tasks", "class2img", "type")]:
        doc = copy.deepcopy(VALID)
        _at(doc, path[:-1])[path[-1]] = f"{MADE_UP}.Thing"
        with pytest.raises(SpecError, match=re.escape(".".join(path))):
            validate_spec(doc)
    text = "\n".join(BASE_YAML + [f"extra: !!python/object/apply:{MADE_UP}.run [1]"])
    with pytest.raises(SpecError, match="not valid YAML"):
        parse_document(text)
    assert import_recorder.seen == []


def test_alias_bomb_is_cheap() -> None:
    # nine levels of ten aliases: 10**9 leaves if anything walked it naively
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    for where in ("top", "params", "list-field"):
        doc_lines = list(BASE_YAML) + lines
        if where == "params":
            doc_lines = [ln.replace("    embed_dim: 4", "    embed_dim: *a9") for ln in doc_lines]
        elif where == "list-field":
            doc_lines = [ln.replace("latent_size:", "latent_size: *a9\nold_latent_size:") for ln in doc_lines]
        start = time.perf_counter()
        with pytest.raises(SpecError):
            validate_spec(parse_document("\n".join(doc_lines)))
        assert time.perf_counter() - start < 5


def test_dates_and_bytes_from_yaml_are_refused_with_a_location() -> None:
    doc = copy.deepcopy(VALID)
    doc["scale_factor"] = datetime.date(2020, 1, 1)
    doc["sampling"]["sampler"] = b"ddim"
    with pytest.raises(SpecError, match="scale_factor") as info:
        validate_spec(doc)
    assert "sampling.sampler" in str(info.value)
