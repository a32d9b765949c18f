"""Hostile text documents: layouts, specs, command-line values and PNG metadata past ldmkit's limits.

Non-UTF-8 bytes, 100,000-deep nesting, a 5000-digit number and duplicate keys end in a typed error
(``InputError`` for inputs, ``SpecError`` for specs) and, on the CLI, in exit code 2 with one
message; never a traceback, a ``RecursionError`` or a silently kept last key.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
from cli_runner import run_cli_stderr as run_cli

from ldmkit import strict_json
from ldmkit.errors import InputError, SpecError
from ldmkit.generation import read_metadata, save_pictures
from ldmkit.inputs import layout_input
from ldmkit.specs import parse_document, parse_value, read_document

BOX = "[0.1, 0.1, 0.5, 0.5]"
DEEP = 100_000

# layout files, each with what its error message must say
LAYOUTS: dict[str, tuple[bytes, str]] = {
    "non-UTF-8 bytes": (b'[{"label": "red \xff circle", "box": ' + BOX.encode() + b"}]", "not UTF-8 text (byte 0xff"),
    "100,000-deep array": (b"[" * DEEP + b"]" * DEEP, "nested more than 100 deep"),
    "100,000-deep objects": (b'{"a": ' * DEEP + b"1" + b"}" * DEEP, "nested more than 100 deep"),
    "5000-digit integer": (f'[{{"label": {"9" * 5000}, "box": {BOX}}}]'.encode(), "a number of 5000 characters"),
    "5000-digit fraction": (f'[{{"label": 1, "box": [0.{"1" * 5000}, 0.1, 0.5, 0.5]}}]'.encode(), "5002 characters"),
    "two label keys": (f'[{{"label": "red circle", "label": "blue square", "box": {BOX}}}]'.encode(), "'label'"),
    "NaN in a box": (b'[{"label": 1, "box": [NaN, 0.1, 0.5, 0.5]}]', "NaN is not a number"),
}


def assert_one_message(code: int, stderr: str, expected: str) -> None:
    assert code == 2, stderr
    assert stderr.startswith("ldmkit: error:") and expected in stderr, stderr
    assert "Traceback" not in stderr and stderr.count("ldmkit: error:") == 1, stderr


# -- ldmkit.strict_json --------------------------------------------------------------------------


def test_strict_json_reads_ordinary_documents_as_json_does() -> None:
    text = '{"a": [1, 2.5, -3e-2, {"b": null, "c": "[[[{{{"}], "d": 1234567890123456789012345}'
    assert strict_json.loads(text) == json.loads(text)
    nested = "[" * strict_json.MAX_DEPTH + "]" * strict_json.MAX_DEPTH
    assert strict_json.loads(nested) == json.loads(nested)  # exactly at the limit is read
    assert strict_json.loads("9" * strict_json.MAX_NUMBER_CHARS) == int("9" * strict_json.MAX_NUMBER_CHARS)


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        ("[" * (strict_json.MAX_DEPTH + 1) + "]" * (strict_json.MAX_DEPTH + 1), strict_json.JSONLimitError, "100 deep"),
        ("[" * DEEP, strict_json.JSONLimitError, "100 deep"),  # unbalanced too: the depth is checked first
        ("9" * (strict_json.MAX_NUMBER_CHARS + 1), strict_json.JSONLimitError, "101 characters"),
        ("-0." + "1" * 5000, strict_json.JSONLimitError, "5003 characters"),
        ('{"a": 1, "a": 2}', strict_json.DuplicateKeyError, "duplicate key 'a'"),
        (b'"\xff"', UnicodeDecodeError, "utf-8"),
    ],
)
def test_strict_json_refuses_with_value_errors(text: str | bytes, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        strict_json.loads(text)
    assert issubclass(error, ValueError)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = json.dumps({"s": "[" * 5000 + '\\"{' * 500})
    assert strict_json.loads(text) == json.loads(text)


# -- layouts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(LAYOUTS), ids=list(LAYOUTS))
def test_layout_text_is_refused_with_an_input_error(case: str) -> None:
    data, expected = LAYOUTS[case]
    for given in (data, bytearray(data)):
        with pytest.raises(InputError, match="^layout: ") as info:
            layout_input(given)
        assert expected in str(info.value)


def test_a_duplicate_key_never_keeps_the_last() -> None:
    text = f'[{{"label": "red circle", "box": {BOX}, "label": "blue square"}}]'
    with pytest.raises(InputError, match="duplicate key 'label'"):
        layout_input(text)
    assert layout_input(f'[{{"label": "red circle", "box": {BOX}}}]')[0].label == "red circle"


# each CLI run loads the shipped model: the four cases of the issue, each through one of the two flags
CLI_LAYOUTS = [
    ("--layout", "non-UTF-8 bytes"),
    ("--input", "100,000-deep array"),
    ("--layout", "5000-digit integer"),
    ("--input", "two label keys"),
]


@pytest.mark.parametrize(("flag", "case"), CLI_LAYOUTS, ids=[f"{f} {c}" for f, c in CLI_LAYOUTS])
def test_layout_files_exit_2_on_the_cli(case: str, flag: str, tmp_path: Path) -> None:
    data, expected = LAYOUTS[case]
    path = tmp_path / "layout.json"
    path.write_bytes(data)
    given = [flag, str(path)] if flag == "--layout" else [flag, f"layout=@{path}"]
    out = tmp_path / "out"
    code, stderr = run_cli(["generate", "--task", "layout2img", *given, "-n", "1", "--steps", "1", "--out", str(out)])
    assert_one_message(code, stderr, expected)
    assert not out.exists() or not any(out.iterdir())


# -- specs ---------------------------------------------------------------------------------------

SPEC_TEXTS: dict[str, tuple[str, bytes, str]] = {
    "yaml 100,000-deep flow list": ("spec.yaml", b"first_stage: " + b"[" * DEEP + b"]" * DEEP, "nested more than 100"),
    "yaml 100,000-deep flow mapping": ("spec.yaml", b"{a: " * DEEP + b"1" + b"}" * DEEP, "nested more than 100"),
    "yaml deep block lists": ("spec.yaml", b"".join(b"  " * i + b"- \n" for i in range(150)), "nested more than 100"),
    "yaml 5000-digit integer": ("spec.yaml", b"scale_factor: " + b"9" * 5000, "line 1: a number of 5000 characters"),
    "yaml 5000-digit float": ("spec.yaml", b"scale_factor: 0." + b"1" * 5000, "a number of 5002 characters"),
    "yaml non-UTF-8": ("spec.yaml", b"first_stage: {type: \xff}\n", "not UTF-8 text (byte 0xff at 20)"),
    "yaml duplicate key": ("spec.yaml", b"first_stage: {type: a}\nfirst_stage: {type: b}\n", "line 2: duplicate key"),
    "json 100,000-deep": ("spec.json", b'{"first_stage": ' + b"[" * DEEP + b"]" * DEEP + b"}", "nested more than 100"),
    "json 5000-digit number": ("spec.json", b'{"scale_factor": ' + b"9" * 5000 + b"}", "a number of 5000 characters"),
    "json non-UTF-8": ("spec.json", b'{"first_stage": "\xfe"}', "not UTF-8 text (byte 0xfe"),
    "json duplicate key": ("spec.json", b'{"scale_factor": 1, "scale_factor": 2}', "duplicate key 'scale_factor'"),
}


@pytest.mark.parametrize("case", list(SPEC_TEXTS), ids=list(SPEC_TEXTS))
def test_spec_files_past_the_limits_are_spec_errors(case: str, tmp_path: Path) -> None:
    name, data, expected = SPEC_TEXTS[case]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(SpecError) as info:
        read_document(path)
    assert str(info.value).startswith(f"{path}: ") and expected in str(info.value)


def test_yaml_within_the_limits_reads_as_before() -> None:
    depth = 90  # the document mapping and the value's lists together stay within 100
    data = parse_document("a: " + "[" * depth + "1" + "]" * depth + "\nb: 1.5e-3\nc: " + "7" * 100, "x.yaml")
    inner = data["a"]
    for _ in range(depth):
        (inner,) = inner
    assert inner == 1 and data["b"] == 1.5e-3 and data["c"] == int("7" * 100)


@pytest.mark.parametrize("case", list(SPEC_TEXTS), ids=list(SPEC_TEXTS))
@pytest.mark.parametrize("command", ["validate", "generate", "train"])
def test_spec_files_exit_2_on_the_cli(case: str, command: str, tmp_path: Path) -> None:
    name, data, expected = SPEC_TEXTS[case]
    path = tmp_path / name
    path.write_bytes(data)
    argv = {
        "validate": ["validate", str(path)],
        "generate": ["generate", "--spec", str(path), "--task", "uncond", "-n", "1", "--out", str(tmp_path / "o")],
        "train": ["train", str(path), "--out-dir", str(tmp_path / "run")],
    }[command]
    code, stderr = run_cli(argv)
    assert_one_message(code, stderr, expected)


# -- values given on the command line -------------------------------------------------------------


VALUES = {
    "100,000-deep list": ("[" * DEEP, "nested more than 100 deep"),
    "5000-digit number": ("9" * 5000, "a number of 5000 characters"),
    "duplicate key": ("{a: 1, a: 2}", "duplicate key 'a'"),
}


@pytest.mark.parametrize("case", list(VALUES), ids=list(VALUES))
def test_command_line_values_have_the_spec_limits(case: str) -> None:
    text, expected = VALUES[case]
    with pytest.raises(SpecError, match=f"^--set x: .*{expected}"):
        parse_value(text, "--set x")
    code, stderr = run_cli(["train", "examples/train/tiny-autoencoder.yaml", "--set", f"optimizer.lr={text}"])
    assert_one_message(code, stderr, expected)


def test_sampler_params_past_the_limits_exit_2(tmp_path: Path) -> None:
    argv = ["generate", "--task", "uncond", "--out", str(tmp_path), "-n", "1", "--steps", "1"]
    argv += ["--sampler-param", f"eta={'9' * 5000}", "--sampler-param", "x=" + "[" * DEEP]
    code, stderr = run_cli(argv)
    assert_one_message(code, stderr, "--sampler-param eta: line 1: a number of 5000 characters")
    assert not any(tmp_path.iterdir())


def test_command_line_values_that_are_not_yaml() -> None:
    assert parse_value("[1, 2.5, {a: b}]") == [1, 2.5, {"a": "b"}]
    assert parse_value("a: [", text_if_not_yaml=True) == "a: ["
    with pytest.raises(SpecError, match="not valid YAML"):
        parse_value("a: [", "--set x")


# -- PNG metadata ----------------------------------------------------------------------------------


def _with_text(tmp_path: Path, text: bytes) -> Path:
    """A PNG written by save_pictures whose ldmkit chunk is replaced by ``text`` (compressed iTXt)."""
    import struct

    import torch

    from ldmkit import SampleOptions

    (path,) = save_pictures(
        tmp_path, torch.zeros(1, 3, 4, 4), task="uncond", inputs={}, options=SampleOptions(n=1, seed=0, steps=1),
        model={"source": "default", "weights_sha256": None},
    )  # fmt: skip
    png = path.read_bytes()
    start = png.index(b"iTXtldmkit") - 4
    (length,) = struct.unpack(">I", png[start : start + 4])
    body = b"ldmkit\x00\x01\x00\x00\x00" + zlib.compress(text)
    chunk = struct.pack(">I", len(body)) + b"iTXt" + body + struct.pack(">I", zlib.crc32(b"iTXt" + body))
    path.write_bytes(png[:start] + chunk + png[start + 12 + length :])
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b'{"format": 2, "x": ' + b"[" * DEEP + b"]" * DEEP + b"}", "nested more than 100 deep"),
        (b'{"format": 2, "index": ' + b"9" * 5000 + b"}", "a number of 5000 characters"),
        (b'{"format": 2, "format": 2}', "duplicate key 'format'"),
        (b'{"format": 2, "task": "\xff"}', "not valid JSON"),
    ],
)
def test_png_metadata_past_the_limits(text: bytes, expected: str, tmp_path: Path) -> None:
    path = _with_text(tmp_path, text)
    with pytest.raises(InputError, match="ldmkit metadata") as info:
        read_metadata(path)
    assert expected in str(info.value)
    code, stderr = run_cli(["generate", "--replay", str(path), "--out", str(tmp_path / "o")])
    assert_one_message(code, stderr, expected)
