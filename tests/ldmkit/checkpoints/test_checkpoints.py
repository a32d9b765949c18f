"""Checkpoint I/O: format detection, pickle safety, safetensors validation, atomic writes, load_into."""

from __future__ import annotations

import builtins
import contextlib
import gzip
import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import types
import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from ldmkit.checkpoints import (
    LightningCallbackState,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
    detect_format,
    load_checkpoint,
    load_into,
    load_state_dict,
    safetensors_metadata,
    save_state_dict,
)
from ldmkit.errors import CheckpointError, CheckpointFormatError, UnsafeCheckpointError


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(3, 4, generator=g),
        "a.bias": torch.randn(3, generator=g),
        "b.half": torch.randn(2, 2, generator=g).half(),
        "steps": torch.tensor([1, 2, 3]),
    }


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert torch.equal(got[k], want[k]), k


def _torch_save(obj, path: Path, legacy: bool) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


# --------------------------------------------------------------------------------------------
# Round trips and detection
# --------------------------------------------------------------------------------------------
def test_safetensors_round_trip_with_metadata(tmp_path):
    path = save_state_dict(_state(), tmp_path / "w.safetensors", metadata={"format": "pt"})
    assert detect_format(path) == "safetensors"
    _assert_same(load_state_dict(path), _state())
    assert safetensors_metadata(path) == {"format": "pt"}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_save_round_trip(tmp_path, legacy):
    path = _torch_save(_state(), tmp_path / "w.pt", legacy)
    assert detect_format(path) == ("torch-legacy-pickle" if legacy else "torch-zip")
    _assert_same(load_state_dict(path), _state())


def test_format_is_decided_by_content_not_extension(tmp_path):
    st = save_state_dict(_state(), tmp_path / "weights.ckpt")
    legacy = _torch_save(_state(), tmp_path / "weights.safetensors", legacy=True)
    assert detect_format(st) == "safetensors"
    assert detect_format(legacy) == "torch-legacy-pickle"
    _assert_same(load_state_dict(legacy), _state())


def test_shared_and_non_contiguous_tensors_are_saved(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    state = {"w": base, "tied": base, "view": base[1], "t": base.t()}
    path = save_state_dict(state, tmp_path / "s.safetensors")
    got = load_state_dict(path)
    for k, v in state.items():
        assert torch.equal(got[k], v), k


# --------------------------------------------------------------------------------------------
# The original CompVis / Lightning training checkpoint
# --------------------------------------------------------------------------------------------
class FakeModelCheckpoint:
    """Pickled under Lightning's class path, as in the original training checkpoints."""


FakeModelCheckpoint.__module__ = "pytorch_lightning.callbacks.model_checkpoint"
FakeModelCheckpoint.__qualname__ = "ModelCheckpoint"
FakeModelCheckpoint.__name__ = "ModelCheckpoint"


def _write_compvis_checkpoint(path: Path, monkeypatch, legacy: bool) -> dict[str, torch.Tensor]:
    state = _state()
    callback = FakeModelCheckpoint()
    callback.monitor = "val/rec_loss"
    callback.best_model_path = "logs/checkpoints/last.ckpt"
    callback.best_model_score = torch.tensor(0.125)
    ckpt = {
        "state_dict": state,
        "global_step": 470000,
        "epoch": 12,
        "pytorch-lightning_version": "1.4.2",
        "callbacks": {FakeModelCheckpoint: callback},
        "lr": np.float64(1e-4),
        "loss_scale": np.float32(0.5),
        "np_step": np.int64(7),
    }
    with monkeypatch.context() as m:  # the (fake) Lightning modules exist only while saving
        for name in (
            "pytorch_lightning",
            "pytorch_lightning.callbacks",
            "pytorch_lightning.callbacks.model_checkpoint",
        ):
            m.setitem(sys.modules, name, types.ModuleType(name))
        sys.modules["pytorch_lightning.callbacks.model_checkpoint"].ModelCheckpoint = FakeModelCheckpoint
        _torch_save(ckpt, path, legacy)
    assert "pytorch_lightning.callbacks.model_checkpoint" not in sys.modules
    return state


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_compvis_lightning_checkpoint_loads(tmp_path, monkeypatch, legacy):
    path = tmp_path / "model.ckpt"
    state = _write_compvis_checkpoint(path, monkeypatch, legacy)
    ckpt = load_checkpoint(path)
    assert ckpt["global_step"] == 470000 and ckpt["epoch"] == 12
    assert ckpt["lr"] == np.float64(1e-4) and isinstance(ckpt["lr"], np.float64)
    assert ckpt["loss_scale"] == np.float32(0.5) and isinstance(ckpt["loss_scale"], np.float32)
    assert ckpt["np_step"] == 7 and isinstance(ckpt["np_step"], np.int64)
    ((key, callback),) = ckpt["callbacks"].items()
    assert key is LightningCallbackState and isinstance(callback, LightningCallbackState)
    assert callback.best_model_path == "logs/checkpoints/last.ckpt"
    assert callback.state["monitor"] == "val/rec_loss"
    assert float(callback.best_model_score) == 0.125
    _assert_same(load_state_dict(path), state)


def test_numpy_1x_scalar_path_loads(tmp_path):
    # numpy 1.x pickled scalars as numpy.core.multiarray.scalar; rewrite a legacy file to that name.
    path = _torch_save({"state_dict": _state(), "lr": np.float64(0.5)}, tmp_path / "m.ckpt", legacy=True)
    raw = path.read_bytes()
    assert b"numpy._core.multiarray\nscalar" in raw
    path.write_bytes(raw.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar"))
    assert load_checkpoint(path)["lr"] == 0.5


def test_safe_globals_list_is_unchanged(tmp_path, monkeypatch):
    path = tmp_path / "model.ckpt"
    _write_compvis_checkpoint(path, monkeypatch, legacy=False)
    bad = _torch_save({"x": Fraction(1, 3)}, tmp_path / "bad.pt", legacy=False)
    before = set(torch.serialization.get_safe_globals())  # a set inside torch: order is not stable
    load_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(bad)
    truncated = _torch_save(_state(), tmp_path / "truncated.ckpt", legacy=True)
    truncated.write_bytes(truncated.read_bytes()[:-8])  # pickles intact, storage bytes cut: torch.load fails
    with pytest.raises(CheckpointFormatError, match="could not load it"):
        load_checkpoint(truncated)
    after = torch.serialization.get_safe_globals()
    assert set(after) == before and len(after) == len(before)


def test_unsafe_allow_pickle_is_an_explicit_keyword(tmp_path):
    path = _torch_save({"x": Fraction(1, 3), "w": torch.ones(2)}, tmp_path / "f.pt", legacy=False)
    with pytest.raises(UnsafeCheckpointError, match=r"fractions\.Fraction"):
        load_checkpoint(path)
    assert load_checkpoint(path, unsafe_allow_pickle=True)["x"] == Fraction(1, 3)


def test_old_torch_is_refused_for_pickles(tmp_path, monkeypatch):
    path = _torch_save(_state(), tmp_path / "w.pt", legacy=False)
    monkeypatch.setattr(torch, "__version__", "2.9.1")
    with pytest.raises(CheckpointError, match=r"2\.10"):
        load_state_dict(path)


# --------------------------------------------------------------------------------------------
# Malicious pickles
# --------------------------------------------------------------------------------------------
def _payload(kind: str, marker: Path):
    cmd = f"open({str(marker)!r}, 'w').close()"
    calls = {
        "os.system": (os.system, (f"touch {marker}",)),
        "builtins.exec": (builtins.exec, (cmd,)),
        "builtins.eval": (builtins.eval, (cmd,)),
        "subprocess.Popen": (subprocess.Popen, (["touch", str(marker)],)),
    }
    target = calls[kind]

    class Evil:
        def __reduce__(self):
            return target

    return Evil()


EXPECTED = {
    "os.system": "posix.system" if os.name == "posix" else "nt.system",
    "builtins.exec": "builtins.exec",
    "builtins.eval": "builtins.eval",
    "subprocess.Popen": "subprocess.Popen",
}
CONTAINERS = ["pickle-p2", "pickle-p4", "torch-legacy", "torch-zip"]
EXTENSIONS = [".safetensors", ".ckpt", ".pt", ".bin"]


@pytest.mark.parametrize("ext", EXTENSIONS)
@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("kind", list(EXPECTED))
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, kind, container, ext):
    marker = tmp_path / "pwned"
    evil = _payload(kind, marker)
    path = tmp_path / f"evil{ext}"
    if container.startswith("pickle"):
        path.write_bytes(pickle.dumps({"state_dict": {"w": evil}}, protocol=int(container[-1])))
    else:  # hidden inside an otherwise ordinary state dict
        _torch_save({"state_dict": {"w": torch.ones(2), "x": evil}}, path, legacy=container == "torch-legacy")
    for load in (load_state_dict, load_checkpoint):
        with pytest.raises(UnsafeCheckpointError, match=EXPECTED[kind].replace(".", r"\.")):
            load(path)
    assert not marker.exists()


def test_payload_is_live_when_pickle_is_trusted(tmp_path):
    # Guards the tests above: the same payload does run under unrestricted pickle.
    marker = tmp_path / "pwned"
    path = _torch_save({"x": _payload("builtins.exec", marker)}, tmp_path / "evil.pt", legacy=False)
    load_checkpoint(path, unsafe_allow_pickle=True)
    assert marker.exists()


def test_stack_global_through_memo_is_resolved(tmp_path):
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').close()".encode()
    # Protocol 4 pickle that memoizes the names, drops them, and fetches them back for STACK_GLOBAL.
    raw = (
        b"\x80\x04"
        + b"\x8c\x08builtins\x94"  # SHORT_BINUNICODE + MEMOIZE (0)
        + b"\x8c\x04eval\x94"  # MEMOIZE (1)
        + b"00"  # POP POP
        + b"h\x00h\x01\x93"  # BINGET 0, BINGET 1, STACK_GLOBAL
        + b"\x8c"
        + bytes([len(code)])
        + code
        + b"\x85R."  # TUPLE1 REDUCE STOP
    )
    path = tmp_path / "evil.ckpt"
    path.write_bytes(raw)
    with pytest.raises(UnsafeCheckpointError, match=r"builtins\.eval"):
        load_checkpoint(path)
    assert not marker.exists()


def test_reduce_on_a_computed_callable_is_refused(tmp_path):
    # OrderedDict() is allowed, but calling its result is not a named global.
    raw = b"\x80\x02ccollections\nOrderedDict\n)R)R."
    path = tmp_path / "odd.pt"
    path.write_bytes(raw)
    with pytest.raises(UnsafeCheckpointError, match="REDUCE"):
        load_checkpoint(path)


def test_torch_env_override_does_not_weaken_loading(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    path = _torch_save({"x": Fraction(1, 3)}, tmp_path / "f.pt", legacy=False)
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(path)


# --------------------------------------------------------------------------------------------
# Not a checkpoint
# --------------------------------------------------------------------------------------------
def test_plain_pickle_renamed_safetensors_is_rejected(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=2))
    with pytest.raises(CheckpointFormatError, match="not one written by torch.save"):
        load_state_dict(path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_protocol_torch_cannot_read_safely_is_explained(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"w": torch.ones(2)}, path, pickle_protocol=4)
    with pytest.raises(CheckpointFormatError, match="protocols 2 and 3"):
        load_state_dict(path)


def test_gzip_wrapped_torch_file_is_rejected(tmp_path):
    raw = _torch_save(_state(), tmp_path / "w.pt", legacy=False).read_bytes()
    path = tmp_path / "w.pt.gz"
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(CheckpointFormatError, match="gzip"):
        detect_format(path)


def test_tar_is_rejected(tmp_path):
    inner = _torch_save(_state(), tmp_path / "w.pt", legacy=True)
    path = tmp_path / "w.ckpt"
    with tarfile.open(path, "w") as tar:
        tar.add(inner, arcname="w.pt")
    with pytest.raises(CheckpointFormatError, match="tar"):
        load_state_dict(path)


def _rezip(src: Path, dst: Path, extra: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info))
        for name, data in extra.items():
            zout.writestr(name, data)
    return dst


@pytest.mark.parametrize("second", ["w/other/data.pkl", "x/data.pkl", "w/data.pkl"])
def test_zip_with_two_pickles_is_rejected(tmp_path, second):
    src = _torch_save(_state(), tmp_path / "w.pt", legacy=False)
    evil = pickle.dumps(_payload("os.system", tmp_path / "pwned"), protocol=2)
    with pytest.warns(UserWarning) if second == "w/data.pkl" else contextlib.nullcontext():
        path = _rezip(src, tmp_path / "two.pt", {second: evil})
    with pytest.raises(CheckpointFormatError, match="data.pkl|pickles"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_zip_with_corrupted_crc_is_rejected(tmp_path):
    path = _torch_save({"w": torch.ones(64)}, tmp_path / "w.pt", legacy=False)
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if "/data/" in i.filename)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + 5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointFormatError, match="CRC"):
        load_state_dict(path)


def test_zip_with_junk_entry_is_rejected(tmp_path):
    src = _torch_save(_state(), tmp_path / "w.pt", legacy=False)
    path = _rezip(src, tmp_path / "junk.pt", {"w/code/run.py": b"print('hi')"})
    with pytest.raises(CheckpointFormatError, match="unexpected entry"):
        detect_format(path)


@pytest.mark.parametrize("content", [b"", b"hello world, not a checkpoint", b"\x80\x01}q\x00."])
def test_other_files_are_rejected_naming_the_file(tmp_path, content):
    path = tmp_path / "x.bin"
    path.write_bytes(content)
    with pytest.raises(CheckpointFormatError, match="x.bin"):
        detect_format(path)


def test_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict(tmp_path / "nope.safetensors")


# --------------------------------------------------------------------------------------------
# Malformed safetensors
# --------------------------------------------------------------------------------------------
def _safetensors(header: dict, data: bytes, pad_to: int | None = None, declared: int | None = None) -> bytes:
    blob = json.dumps(header, separators=(",", ":")).encode()
    if pad_to is not None:
        blob = blob.ljust(pad_to - 8 - len(data), b" ")
    return struct.pack("<Q", len(blob) if declared is None else declared) + blob + data


def _f32(offsets: list[int], shape: list[int]) -> dict:
    return {"dtype": "F32", "shape": shape, "data_offsets": offsets}


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (_safetensors({"a": _f32([0, 16], [4])}, bytes(16), declared=10_000), "header"),
        (_safetensors({"a": _f32([0, 16], [4]), "b": _f32([8, 24], [4])}, bytes(24)), "overlapping"),
        (_safetensors({"a": _f32([0, 16], [4])}, bytes(8)), "outside"),
        (_safetensors({"a": _f32([0, 4 * 10**12], [10**6, 10**6])}, bytes(8), pad_to=100), "outside"),
        (_safetensors({"a": _f32([0, 8], [10**6, 10**6])}, bytes(8), pad_to=100), "needs"),
        (_safetensors({"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}, bytes(4)), "dtype"),
        (_safetensors({"a": _f32([0, 16], [-4])}, bytes(16)), "shape"),
        (struct.pack("<Q", 9) + b"{not json" + bytes(4), "JSON"),
    ],
    ids=["header-too-long", "overlap", "out-of-range", "huge-out-of-range", "huge-size", "dtype", "neg", "json"],
)
def test_malformed_safetensors_is_rejected(tmp_path, raw, match):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(raw)
    with pytest.raises(CheckpointFormatError, match=match):
        load_state_dict(path)


def test_huge_declared_tensor_in_100_byte_file(tmp_path):
    raw = _safetensors({"a": _f32([0, 4 * 10**12], [10**6, 10**6])}, bytes(8), pad_to=100)
    assert len(raw) == 100
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(raw)
    assert detect_format(path) == "safetensors"
    with pytest.raises(CheckpointFormatError, match="'a'"):
        load_state_dict(path)


# --------------------------------------------------------------------------------------------
# Non-finite weights
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["safetensors", "zip"])
def test_non_finite_weights_are_reported(tmp_path, fmt):
    state = _state()
    state["a.weight"][0, 0] = float("nan")
    state["b.half"][1, 1] = float("inf")
    if fmt == "safetensors":
        path = save_state_dict(state, tmp_path / "w.safetensors")
    else:
        path = _torch_save(state, tmp_path / "w.pt", legacy=False)
    with pytest.raises(CheckpointError, match="2 tensors") as info:
        load_state_dict(path)
    assert "a.weight" in str(info.value) and "b.half" in str(info.value) and "a.bias" not in str(info.value)
    assert torch.isnan(load_state_dict(path, check_finite=False)["a.weight"][0, 0])


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------
def test_atomic_helpers_round_trip(tmp_path):
    assert atomic_write_text(tmp_path / "a.txt", "héllo").read_text(encoding="utf-8") == "héllo"
    assert atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    _assert_same(load_state_dict(atomic_torch_save(_state(), tmp_path / "c.pt")), _state())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.pt"]


def test_failed_save_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = save_state_dict({"w": torch.zeros(3)}, tmp_path / "w.safetensors")
    old = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(CheckpointError, match="No space left"):
        save_state_dict({"w": torch.ones(3)}, path)
    with pytest.raises(CheckpointError):
        atomic_write_text(tmp_path / "spec.yaml", "x: 1")
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_unwritable_directory_gives_clear_error(tmp_path, monkeypatch):
    # Runs as any user: the temp file cannot be created, as in a read-only directory.
    path = save_state_dict({"w": torch.zeros(3)}, tmp_path / "w.safetensors")
    old = path.read_bytes()
    real_open = os.open

    def refusing_open(file, flags, *args, **kwargs):
        if str(file).endswith(".tmp") and flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    with pytest.raises(CheckpointError, match="Permission denied"):
        save_state_dict({"w": torch.ones(3)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_read_only_directory_gives_clear_error(tmp_path):
    path = save_state_dict({"w": torch.zeros(3)}, tmp_path / "w.safetensors")
    old = path.read_bytes()
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(CheckpointError, match="could not write"):
            save_state_dict({"w": torch.ones(3)}, path)
    finally:
        tmp_path.chmod(0o755)
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_save_rejects_non_tensors(tmp_path):
    with pytest.raises(CheckpointError, match="'x'"):
        save_state_dict({"x": [1, 2]}, tmp_path / "w.safetensors")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------
# load_into
# --------------------------------------------------------------------------------------------
def test_load_into_lists_missing_and_unexpected_keys(tmp_path):
    module = torch.nn.Linear(4, 3)
    path = save_state_dict({"weight": torch.ones(3, 4), "extra": torch.ones(1)}, tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_into(module, path, what="first_stage")
    msg = str(info.value)
    assert "first_stage" in msg and "1 missing keys: bias" in msg and "1 unexpected keys: extra" in msg
    result = load_into(module, path, strict=False)
    assert result.missing == ["bias"] and result.unexpected == ["extra"]
    assert torch.equal(module.weight.detach(), torch.ones(3, 4))


def test_load_into_lists_first_20_with_counts():
    module = torch.nn.Sequential(*[torch.nn.Linear(1, 1) for _ in range(15)])  # 30 keys
    with pytest.raises(CheckpointError, match=r"30 missing keys: .*\(\+10 more\)"):
        load_into(module, {})


def test_load_into_shape_mismatch_prefix_ignore_and_dtype_cast():
    module = torch.nn.Linear(4, 3)
    with pytest.raises(CheckpointError, match=r"weight: checkpoint \(4, 3\) vs model \(3, 4\)"):
        load_into(module, {"weight": torch.ones(4, 3), "bias": torch.ones(3)}, strict=False)
    state = {
        "model.weight": torch.full((3, 4), 2.0, dtype=torch.float64),
        "model.bias": torch.zeros(3, dtype=torch.float64),
        "model.loss.disc": torch.ones(5),
        "other.weight": torch.ones(9),
    }
    result = load_into(module, state, prefix="model.", ignore_prefixes=("loss.",))
    assert sorted(result.loaded) == ["bias", "weight"]
    assert module.weight.dtype == torch.float32 and torch.equal(module.weight.detach(), torch.full((3, 4), 2.0))
    with pytest.raises(CheckpointError, match="start with 'nothing.'"):
        load_into(module, state, prefix="nothing.")


def test_load_into_reads_pickled_state_dict(tmp_path, monkeypatch):
    module = torch.nn.Linear(4, 3)
    path = tmp_path / "m.ckpt"
    fake = {"state_dict": {"lin.weight": torch.ones(3, 4), "lin.bias": torch.ones(3)}}
    _torch_save(fake, path, legacy=False)
    load_into(module, path, prefix="lin.")
    assert torch.equal(module.bias.detach(), torch.ones(3))
