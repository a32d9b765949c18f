"""PNG metadata promises: read_metadata accepts what save_pictures writes and refuses anything else cleanly."""

from __future__ import annotations

import io
import json
import random
import struct
import sys
import tracemalloc
import zlib
from pathlib import Path

import pytest
import torch

from ldmkit import SampleOptions
from ldmkit.errors import InputError, SpecError
from ldmkit.generation import MAX_METADATA_BYTES, METADATA_FORMAT, read_metadata, save_pictures
from tests.tiny import tiny_pipeline_spec, tiny_unet_params

SIGNATURE = b"\x89PNG\r\n\x1a\n"
OPTIONS = SampleOptions(n=2, seed=3, steps=7)  # the two pictures valid_png is one of
INPUTS = {"label": "4", "mask": b"\x00\x01binary"}
MODEL = {"source": "default", "weights_sha256": "ab" * 32}


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def chunks_of(png: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        out.append((png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def build(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return SIGNATURE + b"".join(chunk(k, d) for k, d in chunks)


def itxt(text: bytes, compressed: bool = True, keyword: bytes = b"ldmkit") -> tuple[bytes, bytes]:
    body = zlib.compress(text) if compressed else text
    return b"iTXt", keyword + b"\x00" + (b"\x01" if compressed else b"\x00") + b"\x00" + b"\x00\x00" + body


@pytest.fixture(scope="module")
def valid_png(tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("pictures")
    images = torch.linspace(-1, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    paths = save_pictures(out, images, task="class2img", inputs=INPUTS, options=OPTIONS, model=MODEL)
    return paths[1].read_bytes()


@pytest.fixture(scope="module")
def valid_meta(valid_png: bytes) -> dict:
    (data,) = [d for k, d in chunks_of(valid_png) if k == b"iTXt"]
    keyword, rest = data.split(b"\x00", 1)
    assert keyword == b"ldmkit" and rest[:2] == b"\x01\x00"  # compressed with zlib
    text = rest[2:].split(b"\x00", 2)[2]  # after language tag and translated keyword
    return json.loads(zlib.decompress(text))


def with_metadata(valid_png: bytes, *replacement: tuple[bytes, bytes]) -> bytes:
    """The valid PNG with its ldmkit chunk replaced by ``replacement`` (zero or more chunks)."""
    parts = chunks_of(valid_png)
    i = next(i for i, (k, _) in enumerate(parts) if k == b"iTXt")
    return build(parts[:i] + list(replacement) + parts[i + 1 :])


def write(tmp_path: Path, data: bytes, name: str = "x.png") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def refused(path: Path, match: str) -> None:
    with pytest.raises(InputError, match=match):
        read_metadata(path)


# -- what save_pictures writes ----------------------------------------------------------------------


def test_round_trip(valid_png: bytes, tmp_path) -> None:
    meta = read_metadata(write(tmp_path, valid_png))
    assert meta["format"] == METADATA_FORMAT and meta["task"] == "class2img" and meta["index"] == 1
    assert meta["model"] == MODEL
    assert SampleOptions(**meta["options"]) == OPTIONS
    from ldmkit.generation import decode_inputs

    assert decode_inputs(meta["inputs"]) == INPUTS


def test_input_files_are_recorded_by_hash_and_small_ones_carried(valid_meta: dict) -> None:
    import hashlib

    from ldmkit.generation import MAX_EMBEDDED_INPUT, decode_inputs, encode_inputs

    mask = INPUTS["mask"]
    assert valid_meta["inputs"]["label"] == "4"
    assert valid_meta["inputs"]["mask"]["sha256"] == hashlib.sha256(mask).hexdigest()
    assert valid_meta["inputs"]["mask"]["size"] == len(mask)
    large = bytes(MAX_EMBEDDED_INPUT + 1)
    entry = encode_inputs({"image": large})["image"]
    assert entry == {"sha256": hashlib.sha256(large).hexdigest(), "size": len(large)}, "no bytes past the limit"
    with pytest.raises(
        InputError, match=r"'image' is a file of 262145 bytes recorded by its sha256 only.*--input image=@PATH"
    ):
        decode_inputs({"image": entry})
    assert decode_inputs({"image": entry}, {"image": large}) == {"image": large}
    with pytest.raises(
        InputError, match=r"'image': its bytes \(from the file given\) do not match the recorded sha256"
    ):
        decode_inputs({"image": entry}, {"image": large + b"x"})
    forged = {**encode_inputs({"mask": mask})["mask"], "sha256": "00" * 32}
    with pytest.raises(InputError, match=r"'mask': its bytes \(from the picture\) do not match"):
        decode_inputs({"mask": forged})
    assert decode_inputs({"mask": {"base64": encode_inputs({"mask": mask})["mask"]["base64"]}}) == {"mask": mask}


def test_a_sampler_with_params_round_trips(tmp_path) -> None:
    from ldmkit.generation_options import check_options

    options = check_options({"n": 1, "sampler": {"type": "dpmpp-2m", "params": {"spacing": "trailing"}}})
    (path,) = save_pictures(
        tmp_path, torch.zeros(1, 3, 4, 4), task="uncond", inputs={}, options=options.sample_options(), model=MODEL
    )
    recorded = read_metadata(path)["options"]["sampler"]
    assert recorded == {"type": "dpmpp-2m", "params": {"spacing": "trailing"}}
    again = check_options(read_metadata(path)["options"]).sample_options()
    assert (again.sampler.type, again.sampler.params) == ("dpmpp-2m", {"spacing": "trailing"})


def test_metadata_after_the_pixels_is_found(valid_png: bytes, valid_meta: dict, tmp_path) -> None:
    parts = [p for p in chunks_of(valid_png) if p[0] != b"iTXt"]
    moved = build(parts[:-1] + [itxt(json.dumps(valid_meta).encode())] + parts[-1:])
    assert read_metadata(write(tmp_path, moved)) == valid_meta


@pytest.mark.parametrize("kind", ["tEXt", "zTXt", "iTXt-plain"])
def test_other_text_chunk_kinds(valid_png: bytes, valid_meta: dict, tmp_path, kind: str) -> None:
    text = json.dumps(valid_meta).encode()
    replacement = {
        "tEXt": (b"tEXt", b"ldmkit\x00" + text),
        "zTXt": (b"zTXt", b"ldmkit\x00\x00" + zlib.compress(text)),
        "iTXt-plain": itxt(text, compressed=False),
    }[kind]
    assert read_metadata(write(tmp_path, with_metadata(valid_png, replacement))) == valid_meta


# -- files that are not what they claim ------------------------------------------------------------


def test_png_without_metadata(tmp_path) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    refused(write(tmp_path, buf.getvalue()), "carries no ldmkit metadata")


def test_other_text_chunks_are_ignored(valid_png: bytes, tmp_path) -> None:
    other = with_metadata(valid_png, itxt(b"{}", keyword=b"Comment"), (b"tEXt", b"ldmkitX\x00{}"), (b"tEXt", b"ld"))
    refused(write(tmp_path, other), "carries no ldmkit metadata")


@pytest.mark.parametrize(
    "data", [b"", b"GIF89a" + bytes(40), b"\xff\xd8\xff\xe0" + bytes(40), b"just text", SIGNATURE[:-1]]
)
def test_not_a_png(tmp_path, data: bytes) -> None:
    refused(write(tmp_path, data), "not a PNG")


def test_missing_file_and_folder(tmp_path) -> None:
    refused(tmp_path / "absent.png", "no such file")
    refused(tmp_path, "no such file")


def test_every_truncation_is_refused(valid_png: bytes, tmp_path) -> None:
    path = tmp_path / "cut.png"
    for cut in range(len(valid_png)):
        path.write_bytes(valid_png[:cut])
        with pytest.raises(InputError):
            read_metadata(path)


def test_corrupted_metadata_crc(valid_png: bytes, tmp_path) -> None:
    parts = chunks_of(valid_png)
    i = next(i for i, (k, _) in enumerate(parts) if k == b"iTXt")
    raw = bytearray(build(parts))
    start = 8 + sum(12 + len(d) for _, d in parts[:i])
    raw[start + 8 + 12] ^= 0x40  # a byte of the compressed text
    refused(write(tmp_path, bytes(raw)), "CRC|compressed")


def test_two_metadata_chunks(valid_png: bytes, valid_meta: dict, tmp_path) -> None:
    text = json.dumps(valid_meta).encode()
    refused(write(tmp_path, with_metadata(valid_png, itxt(text), itxt(text))), "2 ldmkit metadata chunks")


def test_huge_declared_image_is_never_decoded(valid_png: bytes, valid_meta: dict, tmp_path) -> None:
    parts = chunks_of(valid_png)
    ihdr = struct.pack(">IIBBBBB", 200_000, 200_000, 8, 2, 0, 0, 0)  # 40 G pixels
    bomb = build([(b"IHDR", ihdr)] + parts[1:])
    assert read_metadata(write(tmp_path, bomb)) == valid_meta


# -- size limits and bombs --------------------------------------------------------------------------


def test_oversized_uncompressed_chunk(valid_png: bytes, tmp_path) -> None:
    text = b'{"pad": "' + b"x" * (MAX_METADATA_BYTES + 10) + b'"}'
    refused(write(tmp_path, with_metadata(valid_png, itxt(text, compressed=False))), "larger than")


def _bomb(size: int) -> bytes:
    """zlib data of ``size`` bytes of spaces, compressed without ever holding them."""
    packer = zlib.compressobj(9)
    block = b" " * (1 << 20)
    out = [packer.compress(block) for _ in range(size >> 20)]
    return b"".join(out) + packer.flush()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    body = _bomb(64 << 20)  # 64 MB of text in about 64 kB
    assert len(body) < MAX_METADATA_BYTES // 8
    return body


@pytest.mark.parametrize("kind", [b"iTXt", b"zTXt"])
def test_decompression_bomb_is_refused_without_inflating_it(valid_png: bytes, tmp_path, kind: bytes, bomb) -> None:
    body = bomb
    data = b"ldmkit\x00" + (b"\x01\x00\x00\x00" if kind == b"iTXt" else b"\x00") + body
    path = write(tmp_path, with_metadata(valid_png, (kind, data)))
    tracemalloc.start()
    try:
        refused(path, "larger than")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MAX_METADATA_BYTES


def test_just_over_the_limit_after_decompression(valid_png: bytes, tmp_path) -> None:
    text = b'"' + b"y" * MAX_METADATA_BYTES + b'"'
    refused(write(tmp_path, with_metadata(valid_png, itxt(text))), "larger than")


@pytest.mark.parametrize(
    "body",
    [b"not zlib at all", zlib.compress(b'{"format": 1}')[:-6], b""],
    ids=["garbage", "truncated-stream", "empty"],
)
def test_broken_compressed_text(valid_png: bytes, tmp_path, body: bytes) -> None:
    data = b"ldmkit\x00\x01\x00\x00\x00" + body
    refused(write(tmp_path, with_metadata(valid_png, (b"iTXt", data))), "compressed")


# -- content checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b'{"format": 1, "format": 1}', "not valid JSON"),
        (b'{"format": NaN}', "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"text"', "not a JSON object"),
    ],
    ids=["syntax", "utf8", "duplicate-key", "nan", "deep-nesting", "list", "string"],
)
def test_malformed_json(valid_png: bytes, tmp_path, text: bytes, match: str) -> None:
    refused(write(tmp_path, with_metadata(valid_png, itxt(text))), match)


def _edited(valid_png: bytes, valid_meta: dict, tmp_path: Path, **changes) -> Path:
    meta = {**valid_meta, **changes}
    meta = {k: v for k, v in meta.items() if v is not ...}
    return write(tmp_path, with_metadata(valid_png, itxt(json.dumps(meta).encode())))


@pytest.mark.parametrize("fmt", [3, 0, "1", True, None, ...])
def test_wrong_format_number(valid_png: bytes, valid_meta: dict, tmp_path, fmt) -> None:
    refused(_edited(valid_png, valid_meta, tmp_path, format=fmt), "unknown format")


@pytest.mark.parametrize("field", ["task", "inputs", "options", "model"])
def test_missing_fields(valid_png: bytes, valid_meta: dict, tmp_path, field: str) -> None:
    refused(_edited(valid_png, valid_meta, tmp_path, **{field: ...}), f"lacks '{field}'")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"task": 3}, "task"),
        ({"task": ""}, "task"),
        ({"index": -1}, "index"),
        ({"index": "0"}, "index"),
        ({"index": True}, "index"),
        ({"inputs": ["a"]}, "inputs"),
        ({"inputs": {"image": {"base64": 3}}}, "'image'"),
        ({"inputs": {"image": {"path": "/etc/passwd"}}}, "'image'"),
        ({"inputs": {"image": {"sha256": 3}}}, "'image'"),
        ({"inputs": {"image": {"size": 3}}}, "'image'"),
        ({"inputs": {"image": {"sha256": "ab", "size": True}}}, "'image'"),
        ({"inputs": {"image": {}}}, "'image'"),
        ({"options": {"sampler": {"type": "ddim", "params": [1]}}}, "options.sampler"),
        ({"options": {"sampler": {"type": "no such", "params": {}}}}, "options.sampler"),
        ({"options": {"sampler": {"name": "ddim"}}}, "options.sampler"),
        ({"options": "n=1"}, "options"),
        ({"options": {"steps": "5"}}, "options.steps"),
        ({"options": {"n": 1.5}}, "options.n"),
        ({"options": {"n": True}}, "options.n"),
        ({"options": {"eta": "0"}}, "options.eta"),
        ({"options": {"progress": 1}}, "options.progress"),
        ({"options": {"callback": "os.system"}}, "options.callback"),
        ({"model": "default"}, "model"),
        ({"model": {"source": ["a"]}}, "model.source"),
        ({"model": {"source": "default", "weights_sha256": 5}}, "model.weights_sha256"),
    ],
)
def test_mistyped_fields(valid_png: bytes, valid_meta: dict, tmp_path, changes: dict, match: str) -> None:
    refused(_edited(valid_png, valid_meta, tmp_path, **changes), match)


@pytest.mark.parametrize(
    ("options", "index", "match"),
    [
        ({"n": 100000}, 0, "options.n: Input should be less than or equal to 1024"),
        ({"n": 0}, 0, "options.n"),
        ({"seed": 2**70}, 0, "options.seed"),
        ({"seed": -1}, 0, "options.seed"),
        ({"seed": 2**64 - 1, "n": 2}, 0, "past 2\\^64 - 1"),
        ({"steps": 10**9}, 0, "options.steps"),
        ({"guidance_scale": -1.0}, 0, "options.guidance_scale"),
        ({"sampler": "os.system"}, 0, "options.sampler"),
        ({"n": 2}, 2, "index 2 is past the batch of 2"),
    ],
)
def test_options_follow_the_command_line_rules(valid_png, valid_meta, tmp_path, options, index, match) -> None:
    """A picture's metadata cannot ask for what ``ldmkit generate`` would refuse on its command line."""
    edited = _edited(valid_png, valid_meta, tmp_path, options={**valid_meta["options"], **options}, index=index)
    refused(edited, match)


@pytest.mark.parametrize(("label", "match"), [("\u00b2", "digits 0-9"), ("7" * 5000, "5000 digits")])
def test_a_recorded_label_no_task_can_read_is_refused(valid_png, valid_meta, tmp_path, label, match) -> None:
    refused(_edited(valid_png, valid_meta, tmp_path, inputs={"label": label}), match)


def test_saving_never_replaces_a_picture_and_continues_the_numbering(tmp_path) -> None:
    images = torch.zeros(2, 3, 4, 4)
    (tmp_path / "000007.png").write_bytes(b"someone else's picture")
    first = save_pictures(tmp_path, images, task="uncond", inputs={}, options=OPTIONS, model=MODEL)
    second = save_pictures(tmp_path, images, task="uncond", inputs={}, options=OPTIONS, model=MODEL)
    assert [p.name for p in first + second] == ["000008.png", "000009.png", "000010.png", "000011.png"]
    assert (tmp_path / "000007.png").read_bytes() == b"someone else's picture"
    assert all(read_metadata(p)["index"] == i % 2 for i, p in enumerate(first + second))


def _save_many(folder: str, start, count: int) -> list[str]:
    start.wait()  # both processes write at the same moment
    names = []
    for _ in range(count):
        paths = save_pictures(folder, torch.zeros(1, 3, 4, 4), task="uncond", inputs={}, options=OPTIONS, model=MODEL)
        names += [p.name for p in paths]
    return names


def test_two_processes_writing_into_one_folder_never_collide(tmp_path) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(2, mp_context=context) as pool:
        start = manager.Barrier(2)
        runs = [pool.submit(_save_many, str(tmp_path), start, 15) for _ in range(2)]
        names = [run.result(timeout=300) for run in runs]
    assert not set(names[0]) & set(names[1]), "two runs reported the same picture"
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(names[0] + names[1]) == [f"{i:06d}.png" for i in range(30)]


def test_options_accept_integral_floats(valid_png: bytes, valid_meta: dict, tmp_path) -> None:
    options = {**valid_meta["options"], "eta": 1, "guidance_scale": 7}
    meta = read_metadata(_edited(valid_png, valid_meta, tmp_path, options=options))
    assert SampleOptions(**meta["options"]).guidance_scale == 7


# -- a spec carried in metadata ----------------------------------------------------------------------

SPEC = tiny_pipeline_spec(
    {"type": "identity", "params": {}}, tiny_unet_params(channels=3, channel_mult=[1], num_heads=1), latent_size=None
)


def test_valid_spec_in_metadata_passes(valid_png: bytes, valid_meta: dict, tmp_path) -> None:
    meta = read_metadata(_edited(valid_png, valid_meta, tmp_path, model={**MODEL, "spec": SPEC}))
    assert meta["model"]["spec"] == SPEC


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({**SPEC, "first_stage": {"type": "ldmkit_evil_mod.Thing"}}, "model.spec: first_stage.type"),
        ({**SPEC, "denoiser": {"type": "unet", "params": {"bogus": 1}}}, "model.spec: denoiser.params"),
        ({**SPEC, "extra": 1}, "model.spec: extra"),
        ("first_stage: identity", "model.spec"),
    ],
)
def test_spec_in_metadata_is_validated_like_any_spec(valid_png, valid_meta, tmp_path, spec, match: str) -> None:
    before = set(sys.modules)
    with pytest.raises(SpecError, match=match):
        read_metadata(_edited(valid_png, valid_meta, tmp_path, model={**MODEL, "spec": spec}))
    assert "ldmkit_evil_mod" not in sys.modules and not {m for m in set(sys.modules) - before if "evil" in m}


# -- random damage -------------------------------------------------------------------------------------


def test_random_damage_only_ever_raises_input_error(valid_png: bytes, tmp_path) -> None:
    rng = random.Random(1234)
    path = tmp_path / "damaged.png"
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(400):
        data = bytearray(valid_png)
        for _ in range(rng.randint(1, 4)):
            action = rng.random()
            pos = rng.randrange(len(data))
            if action < 0.6:
                data[pos] = rng.randrange(256)
            elif action < 0.8:
                del data[pos : pos + rng.randint(1, 16)]
            else:
                data[pos:pos] = rng.randbytes(rng.randint(1, 16))
        path.write_bytes(bytes(data))
        try:
            read_metadata(path)
            outcomes["ok"] += 1  # damage that spared the chunks read (e.g. inside pixel data)
        except (InputError, SpecError):
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100


@pytest.mark.parametrize(
    ("sampler", "eta", "read_as"), [("ddpm", 0.0, None), ("euler-a", 0.0, None), ("ddim", 0.0, 0.0)]
)
def test_format_1_eta_is_read_in_todays_meaning(valid_png, valid_meta, tmp_path, sampler, eta, read_as) -> None:
    from ldmkit.generation import METADATA_FORMAT, read_metadata

    options = {**valid_meta["options"], "sampler": sampler, "eta": eta}
    meta = read_metadata(_edited(valid_png, valid_meta, tmp_path, format=1, options=options))
    # format 1 recorded eta 0 for the full ancestral noise of ddpm and euler-a: their default now
    assert meta["format"] == METADATA_FORMAT and meta["options"]["eta"] == read_as
