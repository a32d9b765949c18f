"""Hostile and careless checkpoint files: a typed error (CLI: exit 2, one message), never a crash or a stray read."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import stat
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from ldmkit import Pipeline, compvis
from ldmkit.checkpoints import (
    PickleLimits,
    check_inside,
    check_scale_factor,
    load_checkpoint,
    load_into,
    load_state_dict,
    save_state_dict,
    scan_pickle_globals,
    sha256_of_files,
)
from ldmkit.cli import main
from ldmkit.errors import CheckpointError, CheckpointFormatError
from ldmkit.generation import weights_hash
from tests.tiny import TINY_SPEC

ROOT = Path(__file__).resolve().parents[3]
CIN_VQ = ROOT / "tests" / "fixtures" / "compvis" / "cin-vq"


def torch_zip_with_pickle(path: Path, pickle_bytes: bytes) -> Path:
    """A well-formed torch.save zip whose data.pkl is replaced by ``pickle_bytes``."""
    buf = io.BytesIO()
    torch.save({"state_dict": {"a": torch.zeros(1)}}, buf)
    buf.seek(0)
    with zipfile.ZipFile(buf) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = pickle_bytes if info.filename.endswith("data.pkl") else zin.read(info.filename)
            zout.writestr(info.filename, data)
    return path


def nested_tuple_key(depth: int) -> bytes:
    """{"state_dict": {((...(),...),): 1}}: a dict keyed by a tuple nested ``depth`` deep."""
    return b"\x80\x02}X\x0a\x00\x00\x00state_dict}" + b")" + b"\x85" * depth + b"K\x01ss."


def run_isolated(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run Python in a child process, so a segfault would fail the test instead of killing pytest."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")]), **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=full_env, timeout=300, check=False
    )


def generate_from(folder: Path, out: Path) -> int:
    """``ldmkit generate`` of one class2img picture in one step from the pipeline folder ``folder``."""
    argv = ["generate", "--spec", str(folder), "--task", "class2img", "--label", "1", "-n", "1", "--steps", "1"]
    return main([*argv, "--out", str(out)])


def cli_error(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert captured.err.startswith("ldmkit: error: ")
    return captured.err


# -- 1. nesting depth ---------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [100_000, 200_000])
def test_deeply_nested_pickle_is_refused_by_the_cli(tmp_path, depth):
    ckpt = torch_zip_with_pickle(tmp_path / "deep.ckpt", nested_tuple_key(depth))
    code = "import sys; from ldmkit.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = run_isolated(code, "convert", str(CIN_VQ / "config.yaml"), str(ckpt), str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("ldmkit: error: ")
    assert "nest more than 100 deep" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_deeply_nested_pickle_is_a_typed_error_in_python(tmp_path):
    ckpt = torch_zip_with_pickle(tmp_path / "deep.ckpt", nested_tuple_key(200_000))
    code = (
        "import sys\nfrom ldmkit.checkpoints import load_checkpoint\nfrom ldmkit.errors import CheckpointFormatError\n"
        "try:\n    load_checkpoint(sys.argv[1])\nexcept CheckpointFormatError as e:\n    print('refused:', e)\n"
    )
    proc = run_isolated(code, str(ckpt))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused:" in proc.stdout and "nest" in proc.stdout


def test_depth_limit_can_be_raised_deliberately(tmp_path, monkeypatch):
    ckpt = torch_zip_with_pickle(tmp_path / "deep.ckpt", nested_tuple_key(150))
    with pytest.raises(CheckpointFormatError, match="nest more than 100 deep"):
        load_checkpoint(ckpt)
    # by argument ...
    state = load_checkpoint(ckpt, limits=PickleLimits(max_depth=200))["state_dict"]
    assert list(state.values()) == [1]
    # ... or for the whole process
    monkeypatch.setenv("LDMKIT_MAX_PICKLE_DEPTH", "200")
    assert list(load_checkpoint(ckpt)["state_dict"].values()) == [1]
    monkeypatch.setenv("LDMKIT_MAX_PICKLE_DEPTH", "lots")
    with pytest.raises(CheckpointError, match="LDMKIT_MAX_PICKLE_DEPTH must be a whole number"):
        load_checkpoint(ckpt)


def _long_put(i: int) -> bytes:
    return b"r" + struct.pack("<I", i)


def _long_get(i: int) -> bytes:
    return b"j" + struct.pack("<I", i)


def test_nesting_built_top_down_through_the_memo_is_measured():
    # L0 = []; L1 = []; L0.append(L1); L2 = []; L1.append(L2); ... each list grows after it was stored
    body = b"]" + _long_put(0)
    for i in range(1, 300):
        body += _long_get(i - 1) + b"]" + _long_put(i) + b"a0"
    pickle_bytes = b"\x80\x02" + body + b"."
    with pytest.raises(CheckpointFormatError, match="nest more than 100 deep"):
        scan_pickle_globals(io.BytesIO(pickle_bytes))
    assert scan_pickle_globals(io.BytesIO(pickle_bytes), limits=PickleLimits(max_depth=400)) == set()


def test_stack_and_memo_sizes_are_bounded():
    many_values = b"\x80\x02(" + b"K\x01" * 50 + b"l."
    with pytest.raises(CheckpointFormatError, match="more than 20 values on its stack"):
        scan_pickle_globals(io.BytesIO(many_values), limits=PickleLimits(max_stack=20))
    assert scan_pickle_globals(io.BytesIO(many_values)) == set()
    many_memos = b"\x80\x02" + b"".join(b"K\x01q" + bytes([i]) + b"0" for i in range(30)) + b"N."
    with pytest.raises(CheckpointFormatError, match="memoizes more than 10 objects"):
        scan_pickle_globals(io.BytesIO(many_memos), limits=PickleLimits(max_memo=10))


def test_pickle_size_is_bounded(tmp_path):
    ckpt = torch_zip_with_pickle(tmp_path / "big.ckpt", b"\x80\x02X" + struct.pack("<I", 5000) + b"x" * 5000 + b".")
    with pytest.raises(CheckpointFormatError, match="larger than the 1000-byte limit"):
        load_checkpoint(ckpt, limits=PickleLimits(max_bytes=1000))


# -- 2. declared lengths ------------------------------------------------------------------------------


def huge_string_pickle() -> bytes:
    """611 bytes: a legacy pickle declaring a 2^62-byte string (BINUNICODE8)."""
    data = b"\x80\x02\x8d" + struct.pack("<Q", 2**62) + b"x" * 599 + b"."
    assert len(data) == 611
    return data


@pytest.mark.parametrize("opcode", [b"\x8d", b"\x8e", b"B", b"T"])  # BINUNICODE8, BINBYTES8, BINBYTES, BINSTRING
def test_declared_length_beyond_the_file_is_an_error(tmp_path, opcode):
    size = struct.pack("<Q", 2**62) if opcode in (b"\x8d", b"\x8e") else struct.pack("<I", 2**31 - 1)
    path = tmp_path / "huge.ckpt"
    path.write_bytes(b"\x80\x02" + opcode + size + b"x" * 100 + b".")
    with pytest.raises(CheckpointFormatError, match=r"declares \d+ bytes but only 101 remain"):
        load_checkpoint(path)


def test_declared_length_beyond_a_zip_record_is_an_error(tmp_path):
    ckpt = torch_zip_with_pickle(tmp_path / "z.ckpt", huge_string_pickle())
    with pytest.raises(CheckpointFormatError, match=r"expected 4611686018427387904 bytes .* but only 600 remain"):
        load_checkpoint(ckpt)


def test_611_byte_legacy_pickle_with_a_2_62_byte_string_cli(tmp_path, capsys):
    path = tmp_path / "huge.ckpt"
    path.write_bytes(huge_string_pickle())
    assert main(["convert", str(CIN_VQ / "config.yaml"), str(path), str(tmp_path / "out")]) == 2
    assert "declares 4611686018427387904 bytes" in cli_error(capsys)


def test_text_opcode_without_end_is_bounded(tmp_path):
    path = tmp_path / "line.ckpt"
    path.write_bytes(b"\x80\x02c" + b"a" * 200_000)
    with pytest.raises(CheckpointFormatError, match="longer than 65536 bytes"):
        load_checkpoint(path)


# -- 3. safetensors shapes ----------------------------------------------------------------------------


def safetensors_file(path: Path, header: dict, data: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize(
    "shape, match",
    [
        ([0, 2**62, 2**62], "larger than torch can address"),
        ([2**40, 0, 2**40], "larger than torch can address"),
        ([0] * 65, "65 dims, more than 64"),
    ],
)
def test_safetensors_shape_that_torch_cannot_hold(tmp_path, shape, match):
    path = safetensors_file(tmp_path / "w.safetensors", {"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}})
    with pytest.raises(CheckpointFormatError, match=match):
        load_state_dict(path)


def test_safetensors_empty_tensors_with_large_dims_still_load(tmp_path):
    path = safetensors_file(
        tmp_path / "w.safetensors", {"w": {"dtype": "F32", "shape": [0, 2**20], "data_offsets": [0, 0]}}
    )
    assert load_state_dict(path)["w"].shape == (0, 2**20)


def test_safetensors_shape_error_in_a_pipeline_folder_cli(tmp_path, capsys):
    folder = Pipeline.from_spec(TINY_SPEC).save(tmp_path / "pipe")
    safetensors_file(
        folder / "conditioner.safetensors", {"w": {"dtype": "F32", "shape": [0, 2**62, 2**62], "data_offsets": [0, 0]}}
    )
    assert generate_from(folder, tmp_path / "out") == 2
    assert "larger than torch can address" in cli_error(capsys)


# -- 4. bounded hashing -------------------------------------------------------------------------------


def _naive_hash(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_weights_hash_is_unchanged_for_a_normal_folder(tmp_path):
    folder = Pipeline.from_spec(TINY_SPEC).save(tmp_path / "pipe")
    expected = _naive_hash(sorted(folder.glob("*.safetensors")) + [folder / "spec.yaml"])
    assert weights_hash(folder) == expected
    # a link to a file inside the folder is fine
    (folder / "zz.safetensors").symlink_to(folder / "denoiser.safetensors")
    assert weights_hash(folder) == _naive_hash(sorted(folder.glob("*.safetensors")) + [folder / "spec.yaml"])


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_weights_hash_refuses_a_link_to_dev_zero(tmp_path):
    folder = Pipeline.from_spec(TINY_SPEC).save(tmp_path / "pipe")
    (folder / "extra.safetensors").symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match="links outside its folder"):
        weights_hash(folder)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_hashing_refuses_special_files_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "fifo.safetensors")
    with pytest.raises(CheckpointError, match="not a regular file"):
        sha256_of_files(tmp_path, [tmp_path / "fifo.safetensors"])


def test_generate_with_a_folder_holding_a_dev_zero_link_exits_2(tmp_path, capsys):
    folder = Pipeline.from_spec(TINY_SPEC).save(tmp_path / "pipe")
    (folder / "extra.safetensors").symlink_to("/dev/zero")
    assert generate_from(folder, tmp_path / "out") == 2
    assert "links outside its folder" in cli_error(capsys)


# -- 5. convert refuses what can never load -----------------------------------------------------------


def _cin_vq_state() -> dict:
    raw = load_checkpoint(CIN_VQ / "model.ckpt")
    return dict(raw.get("state_dict", raw))


def _convert(tmp_path: Path, state: dict) -> int:
    ckpt = tmp_path / "edited.ckpt"
    torch.save({"state_dict": state}, ckpt)
    return main(["convert", str(CIN_VQ / "config.yaml"), str(ckpt), str(tmp_path / "out")])


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_convert_refuses_non_finite_weights(tmp_path, capsys, bad):
    state = _cin_vq_state()
    name = next(k for k, v in state.items() if k.startswith("model.diffusion_model.") and v.is_floating_point())
    state[name] = state[name].clone()
    state[name].view(-1)[0] = bad
    assert _convert(tmp_path, state) == 2
    assert "NaN or Inf" in cli_error(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "value, match",
    [
        (torch.tensor(math.nan), "finite number > 0, found nan"),
        (torch.tensor(0.0), "finite number > 0, found 0.0"),
        (torch.tensor(-0.18), "finite number > 0, found -0.18"),
        (torch.tensor(math.inf), "finite number > 0, found inf"),
        (torch.ones(2), "single number, found a torch.float32 tensor of shape \\(2,\\)"),
        ("0.18", "must be a number, found str"),
    ],
)
def test_convert_refuses_a_bad_scale_factor(tmp_path, capsys, value, match):
    state = _cin_vq_state()
    state["scale_factor"] = value
    assert _convert(tmp_path, state) == 2
    err = cli_error(capsys)
    assert "scale_factor" in err
    assert re.search(match, err)
    assert not (tmp_path / "out").exists()


def test_check_scale_factor_accepts_numbers_and_one_element_tensors():
    assert check_scale_factor(torch.tensor(0.18215)) == pytest.approx(0.18215)
    assert check_scale_factor(torch.tensor([2.0])) == 2.0
    assert check_scale_factor(1) == 1.0
    for bad in (True, None, [1.0], 10**400, -1, torch.tensor(True)):
        with pytest.raises(CheckpointError, match="scale_factor"):
            check_scale_factor(bad)


def test_load_into_refuses_non_finite_mappings():
    module = torch.nn.Linear(2, 2)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    state["bias"][0] = math.nan
    with pytest.raises(CheckpointError, match="1 tensors hold NaN or Inf values: bias"):
        load_into(module, state)
    assert torch.isfinite(module.bias).all()


# -- 6. links out of a folder, file contents in messages ----------------------------------------------


def test_pipeline_folder_with_a_weights_link_outside_is_refused(tmp_path, capsys, monkeypatch):
    pipe = Pipeline.from_spec(TINY_SPEC)
    folder = pipe.save(tmp_path / "pipe")
    outside = tmp_path / "elsewhere.safetensors"
    (folder / "conditioner.safetensors").rename(outside)
    (folder / "conditioner.safetensors").symlink_to(outside)
    with pytest.raises(CheckpointError, match="links outside its folder"):
        Pipeline.load(folder)
    assert generate_from(folder, tmp_path / "out") == 2
    assert "links outside its folder" in cli_error(capsys)
    monkeypatch.setenv("LDMKIT_FOLLOW_LINKS", "1")  # a deliberate choice for a folder one trusts
    assert Pipeline.load(folder).conditioner is not None


def test_diffusers_folder_with_a_weights_link_outside_is_refused(tmp_path):
    from ldmkit.diffusers_interop._io import read_weights

    sub = tmp_path / "model" / "unet"
    sub.mkdir(parents=True)
    outside = save_state_dict({"w": torch.ones(2)}, tmp_path / "secret.safetensors")
    (sub / "diffusion_pytorch_model.safetensors").symlink_to(outside)
    with pytest.raises(CheckpointError, match="links outside its folder"):
        read_weights(sub, "diffusion_pytorch_model.safetensors")
    (sub / "diffusion_pytorch_model.safetensors").unlink()
    save_state_dict({"w": torch.ones(2)}, sub / "real.safetensors")
    (sub / "diffusion_pytorch_model.safetensors").symlink_to("real.safetensors")  # inside: fine
    assert torch.equal(read_weights(sub, "diffusion_pytorch_model.safetensors")["w"], torch.ones(2))


def test_a_link_to_a_secret_file_is_refused_unread(tmp_path):
    secret = tmp_path / "environ"
    secret.write_bytes(b"SHELL=/bin/bash\x00TOKEN=hunter2\x00")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.ckpt").symlink_to(secret)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(folder / "model.ckpt")
    assert "links outside its folder" in str(info.value)
    assert "SHELL" not in str(info.value) and "hunter2" not in str(info.value)
    with pytest.raises(CheckpointError, match="links outside its folder"):
        check_inside(folder / "model.ckpt", folder)


@pytest.mark.parametrize(
    "content",
    [b"SHELL=/bin/bash\x00TOKEN=hunter2\x00" * 40, b"\x80\x02cSHELL hunter2\n.", b'{"SHELL": "hunter2"}' * 30],
)
def test_error_messages_never_quote_file_contents(tmp_path, content, capsys):
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "hunter2" not in str(info.value)
    assert main(["convert", str(CIN_VQ / "config.yaml"), str(path), str(tmp_path / "out")]) == 2
    assert "hunter2" not in cli_error(capsys)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_proc_environ_named_directly_is_not_echoed(tmp_path):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint("/proc/self/environ")
    assert "=" not in str(info.value).split(":", 1)[1]


def test_malformed_pickle_messages_do_not_quote_the_pickle(tmp_path):
    path = tmp_path / "m.ckpt"
    path.write_bytes(b"\x80\x02Shunter2-no-quotes\n.")  # STRING whose quotes are missing
    with pytest.raises(CheckpointFormatError) as info:
        load_checkpoint(path)
    assert "hunter2" not in str(info.value) and "malformed pickle near byte" in str(info.value)


# -- 7. file modes ------------------------------------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_weights_follow_the_umask(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        safetensors = save_state_dict({"w": torch.ones(2)}, tmp_path / "w.safetensors")
        folder = Pipeline.from_spec(TINY_SPEC).save(tmp_path / "pipe")
    finally:
        os.umask(old)
    assert stat.S_IMODE(safetensors.stat().st_mode) == expected
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == expected, path.name


def test_convert_output_loads_and_its_spec_keeps_the_checked_scale_factor(tmp_path):
    state = _cin_vq_state()
    state["scale_factor"] = torch.tensor(0.5)
    assert _convert(tmp_path, state) == 0
    spec = yaml.safe_load((tmp_path / "out" / "spec.yaml").read_text())
    assert spec["scale_factor"] == 0.5
    assert Pipeline.load(tmp_path / "out").scale_factor == 0.5
    assert compvis.load(CIN_VQ / "config.yaml", tmp_path / "edited.ckpt").scale_factor == 0.5


def test_train_resume_scans_the_checkpoint_first(tmp_path):
    from ldmkit.errors import TrainingError
    from ldmkit.training.checkpoint import load_state

    ckpt = torch_zip_with_pickle(tmp_path / "last.ckpt", nested_tuple_key(200_000))
    with pytest.raises(TrainingError, match="nest more than 100 deep"):
        load_state(ckpt)  # refused by the scanner before torch's unpickler could recurse
