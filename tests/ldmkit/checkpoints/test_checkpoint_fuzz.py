"""Property tests: mutated checkpoints end in a typed error or a correct load; no payload ever runs.

Mutations cover pickle opcodes (inside torch.save zips and legacy files), zip members and bytes, and
safetensors headers. A payload that would create a marker file is spliced in; the marker must never
appear. Bounded (about 150 examples a property) so the file runs in seconds.
"""

from __future__ import annotations

import io
import json
import pickletools
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ldmkit.checkpoints import load_checkpoint, load_state_dict, save_state_dict
from ldmkit.errors import LdmkitError

SETTINGS = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# every opcode byte a pickle of protocol <= 5 may hold
OPCODES = sorted({op.code.encode("latin-1") for op in pickletools.opcodes})


def _state() -> dict:
    return {
        "state_dict": {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)},
        "epoch": 3,
        "name": "tiny",
        "nested": {"lr": 0.5, "steps": [1, 2, 3]},
    }


def _payloads(marker: Path) -> list[bytes]:
    """Pickle fragments that, if ever executed, create ``marker``."""
    cmd = f"touch {marker}".encode()
    target = str(marker).encode()
    return [
        b"cos\nsystem\n(V" + cmd + b"\ntR",
        b"cposix\nsystem\nX" + struct.pack("<I", len(cmd)) + cmd + b"\x85R",
        b"\x8c\x08builtins\x8c\x04exec\x93X"
        + struct.pack("<I", len(b"open('" + target + b"','w')"))
        + b"open('"
        + target
        + b"','w')\x85R",
        b"ctorch._utils\n_rebuild_tensor_v2\n(cos\nsystem\n(V" + cmd + b"\ntRtR",
        b"c__builtin__\neval\n(V__import__('os').system('" + cmd + b"')\ntR",
    ]


def _zip_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _legacy_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


BASE_ZIP = _zip_bytes(_state())
BASE_LEGACY = _legacy_bytes(_state())
with zipfile.ZipFile(io.BytesIO(BASE_ZIP)) as _zf:
    PKL_NAME = next(n for n in _zf.namelist() if n.endswith("data.pkl"))
    BASE_PKL = _zf.read(PKL_NAME)


def _mutate(data: st.DataObject, raw: bytes, extra: list[bytes]) -> bytes:
    """Apply 1-4 random edits: flip a byte, insert an opcode or a payload, delete or duplicate a span."""
    out = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        kind = data.draw(st.sampled_from(["flip", "opcode", "insert", "delete", "duplicate", "payload"]), label="kind")
        pos = data.draw(st.integers(0, len(out)), label="pos")
        if kind == "flip" and pos < len(out):
            out[pos] = data.draw(st.integers(0, 255), label="byte")
        elif kind == "opcode":
            out[pos:pos] = data.draw(st.sampled_from(OPCODES), label="op") + data.draw(st.binary(max_size=9))
        elif kind == "insert":
            out[pos:pos] = data.draw(st.binary(min_size=1, max_size=16), label="bytes")
        elif kind == "delete":
            del out[pos : pos + data.draw(st.integers(1, 32), label="n")]
        elif kind == "duplicate":
            n = data.draw(st.integers(1, 64), label="n")
            out[pos:pos] = out[pos : pos + n]
        elif kind == "payload":
            out[pos:pos] = data.draw(st.sampled_from(extra), label="payload")
    return bytes(out)


def _replace_member(zip_raw: bytes, name: str, content: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(zip_raw)) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, content if info.filename == name else zin.read(info.filename))
    return out.getvalue()


def _check_load(path: Path, marker: Path) -> None:
    """A typed error or a load whose top level is a dict; never another exception, never the payload."""
    try:
        result = load_checkpoint(path)
    except LdmkitError:
        pass
    else:
        assert isinstance(result, dict)
    assert not marker.exists(), "a payload ran"


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "PWNED"


def test_base_files_load(tmp_path):
    for name, raw in (("z.ckpt", BASE_ZIP), ("l.ckpt", BASE_LEGACY)):
        (tmp_path / name).write_bytes(raw)
        assert torch.equal(load_checkpoint(tmp_path / name)["state_dict"]["w"], _state()["state_dict"]["w"])


@SETTINGS
@given(data=st.data())
def test_mutated_pickle_in_a_zip(tmp_path, marker, data):
    pkl = _mutate(data, BASE_PKL, _payloads(marker))
    path = tmp_path / "m.ckpt"
    path.write_bytes(_replace_member(BASE_ZIP, PKL_NAME, pkl))
    _check_load(path, marker)


@SETTINGS
@given(data=st.data())
def test_mutated_legacy_pickle(tmp_path, marker, data):
    path = tmp_path / "m.ckpt"
    path.write_bytes(_mutate(data, BASE_LEGACY, _payloads(marker)))
    _check_load(path, marker)


@SETTINGS
@given(data=st.data())
def test_mutated_zip_members_and_bytes(tmp_path, marker, data):
    with zipfile.ZipFile(io.BytesIO(BASE_ZIP)) as zf:
        members = {info.filename: zf.read(info.filename) for info in zf.infolist()}
    action = data.draw(st.sampled_from(["drop", "rename", "add", "rewrite", "raw"]), label="action")
    name = data.draw(st.sampled_from(sorted(members)), label="member")
    if action == "drop":
        members.pop(name)
    elif action == "rename":
        members[data.draw(st.sampled_from([name + ".pkl", "x/" + name, "../" + name, name.upper()]))] = members.pop(
            name
        )
    elif action == "add":
        members[data.draw(st.sampled_from(["archive/data/9", "evil.py", "archive/extra.pkl"]))] = b"\x80\x02N."
    elif action == "rewrite":
        members[name] = _mutate(data, members[name], _payloads(marker))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", data.draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))) as zf:
        for member, content in members.items():
            zf.writestr(member, content)
    raw = buf.getvalue()
    if action == "raw":
        raw = _mutate(data, BASE_ZIP, [b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06"])
    path = tmp_path / "m.ckpt"
    path.write_bytes(raw)
    _check_load(path, marker)


DTYPES = ["F32", "F16", "BF16", "I64", "U8", "BOOL", "F64", "F8_E4M3", "X9", 7, None]
big_ints = st.one_of(st.integers(-3, 70), st.sampled_from([2**31, 2**32 + 1, 2**62, 2**63, 2**64, 2**70]))


@SETTINGS
@given(data=st.data())
def test_mutated_safetensors_header(tmp_path, data):
    path = save_state_dict(
        {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.int64)}, tmp_path / "w.safetensors"
    )
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]
    name = data.draw(st.sampled_from(["w", "b"]), label="tensor")
    field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra", "drop", "length", "bytes"]))
    if field == "dtype":
        header[name]["dtype"] = data.draw(st.sampled_from(DTYPES))
    elif field == "shape":
        header[name]["shape"] = data.draw(st.one_of(st.lists(big_ints, max_size=6), st.just("2x3"), st.just([1.5])))
    elif field == "data_offsets":
        header[name]["data_offsets"] = data.draw(st.lists(big_ints, min_size=0, max_size=3))
    elif field == "extra":
        header[name]["extra"] = 1
    elif field == "drop":
        header.pop(name)
    text = json.dumps(header).encode()
    length = len(text)
    if field == "length":
        length = data.draw(st.one_of(st.integers(0, len(text) + len(body) + 8), st.sampled_from([2**62, 2**64 - 1])))
    blob = struct.pack("<Q", length) + text + body
    if field == "bytes":
        blob = _mutate(data, blob, [b"{", b"}", b'"shape":[', b"\xff"])
    path.write_bytes(blob)
    try:
        state = load_state_dict(path)
    except LdmkitError:
        return
    # a load is correct: every tensor fits in the file it came from
    for tensor in state.values():
        assert tensor.numel() * tensor.element_size() <= len(blob)
