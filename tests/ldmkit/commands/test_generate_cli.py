"""``ldmkit generate`` with the shipped Shapes model: every task, metadata, replay, seeds and bad input."""

from __future__ import annotations

import base64
import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import run_cli
from PIL import Image

import ldmkit
from ldmkit.cli import main
from ldmkit.errors import SpecError
from ldmkit.generation import (
    default_guidance,
    default_model_dir,
    default_sampling,
    read_metadata,
    weights_hash,
    write_png,
)
from ldmkit.pipeline import SPEC_FILE
from ldmkit.specs import load_spec
from ldmkit_shapes import CLASS_NAMES, ShapesDataset

N = 2
SEED = 1
FAST = ["-n", str(N), "--seed", str(SEED), "--steps", "3", "--no-progress"]
TASKS = ("uncond", "class2img", "text2img", "layout2img", "semantic2img", "superres", "inpaint")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _u8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path | str]:
    """Input files of every task, made from a Shapes sample."""
    d = tmp_path_factory.mktemp("inputs")
    b = ShapesDataset.from_params({"seed": 3}).batch([0])
    layout = [{"label": CLASS_NAMES[o["label"]], "box": o["box"]} for o in b["layout"][0]]
    (d / "layout.json").write_text(json.dumps(layout))
    Image.fromarray(b["segmentation"][0].to(torch.uint8).numpy(), "L").save(d / "seg.png")
    Image.fromarray(_u8(b["lowres"][0]), "RGB").save(d / "low.png")
    Image.fromarray(_u8(b["image"][0]), "RGB").save(d / "image.png")
    Image.fromarray((b["mask"][0, 0] * 255).to(torch.uint8).numpy(), "L").save(d / "mask.png")
    return {
        "dir": d,
        "label": CLASS_NAMES[int(b["class_label"][0])],
        "prompt": b["caption"][0],
        "layout": d / "layout.json",
        "segmentation": d / "seg.png",
        "lowres": d / "low.png",
        "image": d / "image.png",
        "mask": d / "mask.png",
    }


def task_args(task: str, inputs: dict) -> list[str]:
    return {
        "uncond": [],
        "class2img": ["--label", inputs["label"]],
        "text2img": ["--prompt", inputs["prompt"]],
        "layout2img": ["--layout", str(inputs["layout"])],
        "semantic2img": ["--segmentation", str(inputs["segmentation"])],
        "superres": ["--image", str(inputs["lowres"])],
        "inpaint": ["--image", str(inputs["image"]), "--mask", str(inputs["mask"])],
    }[task]


SHIPPED_SPEC = load_spec(default_model_dir() / SPEC_FILE)
# tasks of the shipped spec that set their own default guidance (the others use sampling.guidance_scale)
SHIPPED_GUIDANCE = {
    name: task.params["guidance_scale"] for name, task in SHIPPED_SPEC.tasks.items() if "guidance_scale" in task.params
}


def test_a_task_guidance_default_overrides_the_spec_default():
    spec = load_spec(default_model_dir() / SPEC_FILE).model_dump(mode="json")
    spec["sampling"]["guidance_scale"] = 1.5
    spec["tasks"]["class2img"]["params"]["guidance_scale"] = 3.25
    spec["tasks"]["text2img"]["params"].pop("guidance_scale", None)
    pipe = ldmkit.Pipeline.from_spec(spec)
    assert default_guidance(pipe, "class2img") == 3.25
    assert default_guidance(pipe, "text2img") == 1.5
    spec["tasks"]["class2img"]["params"]["guidance_scale"] = -1.0
    with pytest.raises(SpecError, match="guidance_scale"):
        ldmkit.Pipeline.from_spec(spec)


def test_a_task_sampler_and_steps_override_the_spec_sampling():
    spec = load_spec(default_model_dir() / SPEC_FILE).model_dump(mode="json")
    spec["sampling"].update(sampler="plms", steps=30)
    spec["tasks"]["uncond"]["params"] = {"sampler": "ddpm", "steps": 120}
    spec["tasks"]["class2img"]["params"].pop("sampler", None)
    spec["tasks"]["class2img"]["params"].pop("steps", None)
    spec["tasks"]["text2img"]["params"]["steps"] = 10
    pipe = ldmkit.Pipeline.from_spec(spec)
    assert default_sampling(pipe, "uncond") == ("ddpm", 120)
    assert default_sampling(pipe, "class2img") == ("plms", 30)
    assert default_sampling(pipe, "text2img") == ("plms", 10)
    spec["tasks"]["uncond"]["params"]["steps"] = 0
    with pytest.raises(SpecError, match="steps"):
        ldmkit.Pipeline.from_spec(spec)


def test_generate_takes_the_task_sampler_unless_told(tmp_path):
    own_sampler, _ = default_sampling(ldmkit.Pipeline.load(default_model_dir()), "uncond")
    for i, (extra, expected) in enumerate([([], own_sampler), (["--sampler", "plms"], "plms")]):
        out = tmp_path / str(i)
        argv = ["generate", "--task", "uncond", "-n", "1", "--steps", "2", *extra, "--out", str(out)]
        code, _, stderr = run_cli(argv)
        assert code == 0, stderr
        options = read_metadata(out / "000000.png")["options"]
        assert (options["sampler"], options["steps"]) == (expected, 2)


@pytest.fixture(scope="module")
def generated(tmp_path_factory, inputs) -> Callable[[str], tuple[Path, str]]:
    """Output folder (and stdout) of one generate run per task, made once for the module."""
    root = tmp_path_factory.mktemp("generated")
    cache: dict[str, tuple[Path, str]] = {}

    def get(task: str) -> tuple[Path, str]:
        if task not in cache:
            out = root / task
            argv = ["generate", "--task", task, *task_args(task, inputs), *FAST, "--out", str(out)]
            code, stdout, stderr = run_cli(argv)
            assert code == 0, stderr
            cache[task] = (out, stdout)
        return cache[task]

    return get


@pytest.mark.parametrize("task", TASKS)
def test_each_task_writes_pictures_with_metadata(task, inputs, generated):
    out, stdout = generated(task)
    paths = sorted(out.iterdir())
    assert [p.name for p in paths] == [f"{i:06d}.png" for i in range(N)]
    assert stdout.split() == [str(p) for p in paths]
    pictures = []
    for i, path in enumerate(paths):
        with Image.open(path) as img:
            assert (img.size, img.mode) == ((64, 64), "RGB")
        pictures.append(_pixels(path))
        meta = read_metadata(path)
        assert meta["task"] == task and meta["index"] == i
        options = meta["options"]
        sampler = SHIPPED_SPEC.tasks[task].params.get("sampler", SHIPPED_SPEC.sampling.sampler)
        assert (options["n"], options["seed"], options["steps"], options["sampler"]) == (N, SEED, 3, sampler)
        assert options["guidance_scale"] == SHIPPED_GUIDANCE.get(task, SHIPPED_SPEC.sampling.guidance_scale)
        assert meta["model"] == {"source": "default", "weights_sha256": weights_hash(default_model_dir())}
        assert meta["runtime"] == {"device": "cpu", "fast": False}  # the defaults: CPU, no fast path
        recorded = meta["inputs"]
        for key, value in zip(task_args(task, inputs)[::2], task_args(task, inputs)[1::2], strict=True):
            key = key.removeprefix("--")
            if key in ("label", "prompt"):
                assert recorded[key] == value
            else:  # file inputs travel inside the picture, so replay needs no other file
                assert base64.b64decode(recorded[key]["base64"]) == Path(value).read_bytes()
        assert set(recorded) == {k.removeprefix("--") for k in task_args(task, inputs)[::2]}
    assert not np.array_equal(pictures[0], pictures[1]), "each picture of a batch has its own noise"


@pytest.mark.parametrize("task", ["class2img", "inpaint", "layout2img"])
def test_replay_is_identical(task, generated, tmp_path):
    out, _ = generated(task)
    original = out / "000001.png"  # not the first: the index inside the batch must be honoured
    code, stdout, stderr = run_cli(["generate", "--replay", str(original), "--out", str(tmp_path / "replay")])
    assert code == 0, stderr
    assert "identical" in stdout and "DIFFERS" not in stdout
    (replayed,) = sorted((tmp_path / "replay").iterdir())
    assert np.array_equal(_pixels(replayed), _pixels(original))
    # the replayed picture replays too: its metadata still points at the same picture of the batch
    code, stdout, stderr = run_cli(["generate", "--replay", str(replayed), "--out", str(tmp_path / "again")])
    assert code == 0 and "identical" in stdout, stdout + stderr


def test_replay_of_a_changed_picture_reports_the_difference(generated, tmp_path):
    out, _ = generated("class2img")
    meta = read_metadata(out / "000000.png")
    pixels = torch.from_numpy(_pixels(out / "000000.png").copy())
    before = pixels[0, 0].clone()
    pixels[0, 0] = 255 - pixels[0, 0]
    write_png(tmp_path / "edited.png", pixels, meta)
    code, stdout, _ = run_cli(["generate", "--replay", str(tmp_path / "edited.png"), "--out", str(tmp_path / "r")])
    assert code == 1 and "DIFFERS" in stdout
    largest = int((255 - 2 * before.int()).abs().max())
    assert f"3 of {pixels.numel()} values, by at most {largest}/255" in stdout, stdout
    assert "versions" not in stdout  # made and replayed by the same versions


def test_replay_names_the_versions_when_they_differ(generated, tmp_path):
    out, _ = generated("class2img")
    meta = {**read_metadata(out / "000000.png"), "ldmkit": "0.0.1"}
    pixels = torch.from_numpy(_pixels(out / "000000.png").copy())
    pixels[1, 2, 0] = (int(pixels[1, 2, 0]) + 1) % 256
    write_png(tmp_path / "old.png", pixels, meta)
    code, stdout, _ = run_cli(["generate", "--replay", str(tmp_path / "old.png"), "--out", str(tmp_path / "r")])
    assert code == 1 and "1 of" in stdout and "recorded with ldmkit 0.0.1" in stdout, stdout


def test_replay_refuses_other_weights(generated, tmp_path):
    out, _ = generated("class2img")
    meta = read_metadata(out / "000000.png")
    meta["model"]["weights_sha256"] = "0" * 64
    write_png(tmp_path / "other.png", torch.from_numpy(_pixels(out / "000000.png").copy()), meta)
    code, _, stderr = run_cli(["generate", "--replay", str(tmp_path / "other.png"), "--out", str(tmp_path / "r")])
    assert code == 2 and "other weights" in stderr


def test_same_seed_same_files_other_seed_other_pictures(generated, inputs, tmp_path):
    out, _ = generated("class2img")
    args = ["generate", "--task", "class2img", *task_args("class2img", inputs)]
    assert run_cli([*args, *FAST, "--out", str(tmp_path / "same")])[0] == 0
    for name in ("000000.png", "000001.png"):
        assert (tmp_path / "same" / name).read_bytes() == (out / name).read_bytes()
    other = ["-n", str(N), "--seed", str(SEED + 10), "--steps", "3", "--no-progress"]
    assert run_cli([*args, *other, "--out", str(tmp_path / "other")])[0] == 0
    for name in ("000000.png", "000001.png"):
        assert not np.array_equal(_pixels(tmp_path / "other" / name), _pixels(out / name))


def _bad_files(d: Path) -> dict[str, Path]:
    """Input files that are wrong in one way each."""
    files = {}
    for name, boxes in {
        "outside": [{"label": "red circle", "box": [0.1, 0.1, 1.5, 0.5]}],
        "reversed": [{"label": "red circle", "box": [0.6, 0.1, 0.4, 0.5]}],
        "unknown": [{"label": "purple circle", "box": [0.1, 0.1, 0.5, 0.5]}],
    }.items():
        files[name] = d / f"{name}.json"
        files[name].write_text(json.dumps(boxes))
    files["notjson"] = d / "notjson.json"
    files["notjson"].write_text("[{label: red circle")
    seg = np.zeros((64, 64), np.uint8)
    seg[10:20, 10:20] = 4
    files["seg4"] = d / "seg4.png"
    Image.fromarray(seg, "L").save(files["seg4"])
    for side in (32, 40):
        files[f"mask{side}"] = d / f"mask{side}.png"
        Image.fromarray(np.zeros((side, side), np.uint8), "L").save(files[f"mask{side}"])
    for side in (10, 40):
        files[f"rgb{side}"] = d / f"rgb{side}.png"
        Image.fromarray(np.zeros((side, side, 3), np.uint8), "RGB").save(files[f"rgb{side}"])
    files["seg40"] = d / "seg40.png"
    Image.fromarray(np.zeros((40, 40), np.uint8), "L").save(files["seg40"])
    files["text"] = d / "notes.png"
    files["text"].write_text("this is not a picture\n")
    files["plain"] = d / "plain.png"  # a PNG without ldmkit metadata
    Image.fromarray(np.zeros((64, 64, 3), np.uint8), "RGB").save(files["plain"])
    files["afile"] = d / "afile"
    files["afile"].write_text("a file where the output folder should go")
    return files


BAD = {
    "unknown label": (["--task", "class2img", "--label", "purple circle"], "unknown label 'purple circle'"),
    "label id out of range": (["--task", "class2img", "--label", "99"], "label 99 is out of range"),
    "box outside [0,1]": (["--task", "layout2img", "--layout", "{outside}"], "outside [0, 1]"),
    "x0 >= x1": (["--task", "layout2img", "--layout", "{reversed}"], "x0 < x1"),
    "layout label unknown": (["--task", "layout2img", "--layout", "{unknown}"], "unknown label 'purple circle'"),
    "layout not JSON": (["--task", "layout2img", "--layout", "{notjson}"], "not valid JSON"),
    "segmentation value 4": (["--task", "semantic2img", "--segmentation", "{seg4}"], "value 4"),
    # a spatial input sets the picture's size, which must be a multiple of 16 for the Shapes model
    "segmentation size": (["--task", "semantic2img", "--segmentation", "{seg40}"], "40x40 pixels; each side must"),
    "lowres size": (["--task", "superres", "--image", "{rgb10}"], "40x40 pixels; each side must be a positive"),
    "inpaint image size": (["--task", "inpaint", "--image", "{rgb40}", "--mask", "{mask40}"], "multiple of 16"),
    "mask size": (["--task", "inpaint", "--image", "{image}", "--mask", "{mask32}"], "differ in size"),
    "text as image": (["--task", "inpaint", "--image", "{text}", "--mask", "{mask}"], "not a picture Pillow can read"),
    "missing prompt": (["--task", "text2img"], "--prompt"),
    "empty prompt": (["--task", "text2img", "--prompt", ""], "task 'text2img': prompt"),
    "missing mask": (["--task", "inpaint", "--image", "{image}"], "--mask"),
    "missing file": (["--task", "semantic2img", "--segmentation", "{dir}/absent.png"], "no such file"),
    "unknown task": (["--task", "img2video"], "does not serve task 'img2video'"),
    "unknown sampler": (["--task", "uncond", "--sampler", "nonesuch"], "nonesuch"),
    "no pictures": (["--task", "uncond", "-n", "0"], "-n 0"),
    "no steps": (["--task", "uncond", "--steps", "0"], "--steps 0"),
    "no task": ([], "--task is required"),
    "misspelled task": (["--task", "clas2img", "--label", "0"], "did you mean 'class2img'"),
    "seed past 2^64": (["--task", "uncond", "--seed", str(2**70)], "--seed 1180591620717411303424"),
    "last seed past 2^64": (["--task", "uncond", "-n", "3", "--seed", str(2**64 - 2)], "past 2^64 - 1"),
    "negative seed": (["--task", "uncond", "--seed", "-1"], "--seed -1"),
    "superscript label": (["--task", "class2img", "--label", "\u00b2"], "digits 0-9"),
    "5000-digit label": (["--task", "class2img", "--label", "9" * 5000], "5000 digits"),
    "too many pictures": (["--task", "uncond", "-n", "100000"], "-n 100000"),
    "replay without metadata": (["--replay", "{plain}"], "carries no ldmkit metadata"),
    "replay of a missing file": (["--replay", "{dir}/absent.png"], "no such file"),
    "out is a file": (["--task", "uncond", "-n", "1", "--steps", "1", "--out", "{afile}"], "output folder"),
    "out under a file": (["--task", "uncond", "--out", "{afile}/pictures"], "cannot create the output folder"),
    "input the task does not read": (["--task", "uncond", "--prompt", "a red circle"], "does not read prompt"),
    "guidance NaN": (["--task", "text2img", "--prompt", "a red circle", "--guidance", "nan"], "guidance_scale"),
    "guidance infinite": (["--task", "text2img", "--prompt", "a red circle", "--guidance", "inf"], "finite"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_exits_2_with_a_message(case, inputs, tmp_path):
    args, expected = BAD[case]
    names = {**{k: str(v) for k, v in inputs.items()}, **{k: str(v) for k, v in _bad_files(tmp_path).items()}}
    argv = ["generate", *[a.format(**names) for a in args]]
    if "--replay" not in argv:  # keep any generation that should not happen cheap
        for flag in ("-n", "--steps"):
            if flag not in argv:
                argv += [flag, "1"]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    code, stdout, stderr = run_cli(argv)
    assert code == 2, (stdout, stderr)
    assert stderr.startswith("ldmkit: error:") and expected in stderr, stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "nothing is written on error"


# -- --input and --sampler-param -----------------------------------------------------------------


def input_args(task: str, inputs: dict) -> list[str]:
    """The same inputs as :func:`task_args`, written as ``--input KEY=VALUE`` (``@PATH`` for files)."""
    args = task_args(task, inputs)
    out = []
    for flag, value in zip(args[::2], args[1::2], strict=True):
        key = flag.removeprefix("--")
        out += ["--input", f"{key}={value}" if key in ("label", "prompt") else f"{key}=@{value}"]
    return out


@pytest.mark.parametrize("task", [t for t in TASKS if t != "uncond"])
def test_input_flags_are_shorthands_for_input(task, inputs, generated, tmp_path):
    shorthand, _ = generated(task)
    argv = ["generate", "--task", task, *input_args(task, inputs), *FAST, "--out", str(tmp_path)]
    code, _, stderr = run_cli(argv)
    assert code == 0, stderr
    for i in range(N):
        name = f"{i:06d}.png"
        assert np.array_equal(_pixels(tmp_path / name), _pixels(shorthand / name))
        assert read_metadata(tmp_path / name)["inputs"] == read_metadata(shorthand / name)["inputs"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--task", "class2img", "--input", "lable=0"],
            "does not read lable (did you mean 'label'?); its inputs: label",
        ),
        (["--task", "uncond", "--input", "colour=red"], "task 'uncond' does not read colour; its inputs: none"),
        (["--task", "class2img", "--input", "label"], "--input 'label': expected KEY=VALUE"),
        (["--task", "class2img", "--label", "0", "--input", "label=1"], "label is given twice (by --label too)"),
        (["--task", "inpaint", "--input", "image=@{dir}/absent.png", "--mask", "{mask}"], "absent.png: no such file"),
        (["--task", "inpaint", "--input", "image={image}", "--mask", "{mask}"], "task 'inpaint': image: expected"),
        (["--task", "class2img", "--input", "label=purple circle"], "unknown label 'purple circle'"),
        (["--task", "class2img", "--input", "label=\u00b2"], "--input label"),
        (["--task", "class2img"], "task 'class2img' needs --label"),
    ],
)
def test_bad_task_inputs_exit_2(args, expected, inputs, tmp_path):
    names = {k: str(v) for k, v in inputs.items()}
    argv = ["generate", *[a.format(**names) for a in args], *ONE, "--out", str(tmp_path / "out")]
    code, stdout, stderr = run_cli(argv)
    assert code == 2, (stdout, stderr)
    assert stderr.startswith("ldmkit: error:") and expected in stderr and "Traceback" not in stderr, stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_sampler_params_are_used_recorded_and_replayed(tmp_path):
    base = ["generate", "--task", "class2img", "--label", "0", "--sampler", "dpmpp-2m", *ONE, "-n", "2"]
    runs = {}
    for spacing in ("leading", "trailing"):
        out = tmp_path / spacing
        code, _, stderr = run_cli([*base, "--sampler-param", f"spacing={spacing}", "--out", str(out)])
        assert code == 0, stderr
        meta = read_metadata(out / "000001.png")
        assert meta["options"]["sampler"] == {"type": "dpmpp-2m", "params": {"spacing": spacing}}
        runs[spacing] = _pixels(out / "000001.png")
    assert not np.array_equal(runs["leading"], runs["trailing"]), "the sampler param changes the sampling"
    original = tmp_path / "trailing" / "000001.png"
    code, stdout, stderr = run_cli(["generate", "--replay", str(original), "--out", str(tmp_path / "replay")])
    assert code == 0 and "identical" in stdout, stdout + stderr
    replayed = read_metadata(tmp_path / "replay" / "000000.png")
    assert replayed["options"]["sampler"] == {"type": "dpmpp-2m", "params": {"spacing": "trailing"}}


def test_a_large_input_file_is_recorded_by_hash_and_given_again_on_replay(inputs, tmp_path):
    from PIL import PngImagePlugin

    from ldmkit.generation import MAX_EMBEDDED_INPUT

    info = PngImagePlugin.PngInfo()
    info.add_text("padding", random_text(MAX_EMBEDDED_INPUT))  # a 64x64 picture in a file too large to carry
    large = tmp_path / "large.png"
    with Image.open(inputs["image"]) as img:
        img.save(large, pnginfo=info)
    assert large.stat().st_size > MAX_EMBEDDED_INPUT
    argv = ["generate", "--task", "inpaint", "--input", f"image=@{large}", "--mask", str(inputs["mask"]), *ONE]
    code, _, stderr = run_cli([*argv, "--out", str(tmp_path / "out")])
    assert code == 0, stderr
    picture = tmp_path / "out" / "000000.png"
    recorded = read_metadata(picture)["inputs"]
    assert "base64" not in recorded["image"] and "base64" in recorded["mask"]
    code, _, stderr = run_cli(["generate", "--replay", str(picture), "--out", str(tmp_path / "r1")])
    assert code == 2 and "give the file again: --input image=@PATH" in stderr, stderr
    replay = ["generate", "--replay", str(picture), "--input", f"image=@{inputs['image']}"]
    code, _, stderr = run_cli([*replay, "--out", str(tmp_path / "r2")])
    assert code == 2 and "do not match the recorded sha256" in stderr, stderr
    code, stdout, stderr = run_cli([*replay[:-1], f"image=@{large}", "--out", str(tmp_path / "r3")])
    assert code == 0 and "identical" in stdout, stdout + stderr


def random_text(n: int) -> str:
    """``n`` characters that do not compress, so a PNG text chunk of them stays ``n`` bytes."""
    import random

    rng = random.Random(0)
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(n))


def test_sampler_param_values_are_yaml_scalars(tmp_path):
    # the task's default sampler takes the param; "quad" stays text, and the value is recorded as validated
    argv = ["generate", "--task", "class2img", "--label", "0", "--sampler", "ddim", *ONE]
    code, _, stderr = run_cli([*argv, "--sampler-param", "spacing=quad", "--out", str(tmp_path)])
    assert code == 0, stderr
    sampler = read_metadata(tmp_path / "000000.png")["options"]["sampler"]
    assert sampler == {"type": "ddim", "params": {"spacing": "quad"}}
    # the deprecated key still works, and is recorded under its current name
    with pytest.warns(DeprecationWarning, match="spacing"):
        code, _, stderr = run_cli([*argv, "--sampler-param", "discretize=quad", "--out", str(tmp_path / "old")])
    assert code == 0, stderr
    assert read_metadata(tmp_path / "old" / "000000.png")["options"]["sampler"] == sampler


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--sampler", "dpmpp-2m", "--sampler-param", "spacing=bogus"], "--sampler-param spacing='bogus'"),
        (["--sampler", "ddim", "--sampler-param", "spacing=cubic"], "--sampler-param spacing='cubic'"),
        (["--sampler", "ddim", "--sampler-param", "discretize"], "--sampler-param 'discretize': expected KEY=VALUE"),
        (["--sampler", "ddim", "--sampler-param", "discretize=.nan"], "must be a finite number"),
        (["--sampler", "nonesuch", "--sampler-param", "spacing=leading"], "nonesuch"),
    ],
)
def test_bad_sampler_params_exit_2_naming_the_field(args, expected, tmp_path):
    argv = ["generate", "--task", "class2img", "--label", "0", *args, *ONE, "--out", str(tmp_path / "out")]
    code, stdout, stderr = run_cli(argv)
    assert code == 2, (stdout, stderr)
    assert stderr.startswith("ldmkit: error:") and expected in stderr and "Traceback" not in stderr, stderr
    assert not (tmp_path / "out").exists()


def test_help_lists_the_registered_tasks_and_samplers():
    registry = ldmkit.get_registry()
    code, stdout, _ = run_cli_help(["generate", "--help"])
    assert code == 0
    text = " ".join(stdout.split())
    assert ", ".join(registry.names("task")) in text and ", ".join(registry.names("sampler")) in text


def run_cli_help(argv: list[str]) -> tuple[int, str, str]:
    """Like :func:`run_cli` for ``--help``, which argparse ends with SystemExit."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main(argv)
    return int(exit_.value.code or 0), out.getvalue(), err.getvalue()


# -- --device and --fast -------------------------------------------------------------------------

ONE = ["-n", "1", "--steps", "2", "--no-progress"]  # the cheapest generation that still samples


def _refuse_loading(monkeypatch) -> None:
    """Make loading a model fail the test: device checks must come before it."""

    def fail(source):
        raise AssertionError(f"the model was loaded ({source}) before the device was checked")

    monkeypatch.setattr("ldmkit.generation.open_pipeline", fail)
    monkeypatch.setattr("ldmkit.generation.open_model", fail)


@pytest.mark.parametrize("value", ["gpu", "CPU", "cuda:", "cuda:x", "cuda:-1", "cuda:01", "cuda0", "cpu:0", ""])
def test_a_malformed_device_exits_2_before_loading(value, monkeypatch, tmp_path):
    _refuse_loading(monkeypatch)
    code, stdout, stderr = run_cli(["generate", "--task", "uncond", "--device", value, *ONE, "--out", str(tmp_path)])
    assert code == 2, (stdout, stderr)
    assert stderr.startswith("ldmkit: error:") and "Traceback" not in stderr, stderr
    assert f"--device {value!r}: not a device; expected cpu, cuda, cuda:N or auto" in stderr, stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_exits_2(monkeypatch, tmp_path):
    _refuse_loading(monkeypatch)
    for value in ("cuda", "cuda:0"):
        code, _, stderr = run_cli(["generate", "--task", "uncond", "--device", value, *ONE, "--out", str(tmp_path)])
        assert code == 2 and f"--device {value!r}: CUDA is not available" in stderr, stderr
        assert "Traceback" not in stderr


def test_a_cuda_index_past_the_devices_exits_2(monkeypatch, tmp_path):
    _refuse_loading(monkeypatch)
    # one visible GPU, real or pretended, so the index check runs on any machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    code, _, stderr = run_cli(["generate", "--task", "uncond", "--device", "cuda:1", *ONE, "--out", str(tmp_path)])
    assert code == 2 and "--device 'cuda:1': no such CUDA device (1 visible: cuda:0 to cuda:0)" in stderr, stderr


def test_an_unusable_output_folder_exits_2_before_loading(monkeypatch, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("a file where a parent folder should be")
    _refuse_loading(monkeypatch)
    code, stdout, stderr = run_cli(["generate", "--task", "uncond", *ONE, "--out", str(blocker / "pictures")])
    assert code == 2 and "cannot create the output folder" in stderr, (stdout, stderr)


def test_version_names_the_package():
    import ldmkit

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:  # argparse's version action
        main(["--version"])
    assert exited.value.code == 0 and out.getvalue().strip() == f"ldmkit {ldmkit.__version__}"


def test_auto_picks_cuda_only_where_it_is_available(tmp_path):
    code, _, stderr = run_cli(["generate", "--task", "uncond", "--device", "auto", *ONE, "--out", str(tmp_path)])
    assert code == 0, stderr
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert read_metadata(tmp_path / "000000.png")["runtime"] == {"device": expected, "fast": False}


def test_fast_on_the_cpu_gives_the_same_pictures(generated, inputs, tmp_path, caplog):
    out, _ = generated("class2img")  # made on the CPU without --fast
    argv = ["generate", "--task", "class2img", *task_args("class2img", inputs), *FAST, "--device", "cpu", "--fast"]
    with caplog.at_level("INFO"):
        code, _, stderr = run_cli([*argv, "--out", str(tmp_path / "fast")])
    assert code == 0, stderr
    assert "fast path on cpu" in caplog.text, "the fast path was not switched on"
    assert "--fast on the CPU" in caplog.text
    for i in range(N):
        name = f"{i:06d}.png"
        assert np.array_equal(_pixels(tmp_path / "fast" / name), _pixels(out / name))
        assert read_metadata(tmp_path / "fast" / name)["runtime"] == {
            "device": "cpu",
            "fast": True,
            "precision": "fp32",
        }
        assert read_metadata(out / name)["runtime"] == {"device": "cpu", "fast": False}


def test_replay_uses_the_recorded_fast_path_unless_told(tmp_path, caplog):
    argv = ["generate", "--task", "class2img", "--label", "red circle", *ONE, "--fast", "--out", str(tmp_path / "a")]
    assert run_cli(argv)[0] == 0
    original = tmp_path / "a" / "000000.png"
    caplog.clear()
    with caplog.at_level("INFO"):
        code, stdout, stderr = run_cli(["generate", "--replay", str(original), "--out", str(tmp_path / "r")])
    assert code == 0 and "identical" in stdout and "DIFFERS" not in stdout, stdout + stderr
    assert "fast path on cpu" in caplog.text, "the replay did not take the recorded fast path"
    assert read_metadata(tmp_path / "r" / "000000.png")["runtime"] == {
        "device": "cpu",
        "fast": True,
        "precision": "fp32",
    }
    # --no-fast and --device override what was recorded
    code, stdout, stderr = run_cli(
        ["generate", "--replay", str(original), "--no-fast", "--device", "cpu", "--out", str(tmp_path / "plain")]
    )
    assert code == 0 and "identical" in stdout, stdout + stderr
    assert read_metadata(tmp_path / "plain" / "000000.png")["runtime"] == {"device": "cpu", "fast": False}


def test_precision_is_recorded_and_replayed_unless_told(tmp_path, caplog):
    argv = ["generate", "--task", "class2img", "--label", "red circle", *ONE, "--fast", "--precision", "bf16"]
    assert run_cli([*argv, "--out", str(tmp_path / "a")])[0] == 0
    original = tmp_path / "a" / "000000.png"
    assert read_metadata(original)["runtime"] == {"device": "cpu", "fast": True, "precision": "bf16"}
    caplog.clear()
    with caplog.at_level("INFO"):
        code, stdout, stderr = run_cli(["generate", "--replay", str(original), "--out", str(tmp_path / "r")])
    assert code == 0 and "identical" in stdout, stdout + stderr
    assert "dtype=torch.bfloat16" in caplog.text, "the replay did not take the recorded precision"
    caplog.clear()
    with caplog.at_level("INFO"):
        argv = ["generate", "--replay", str(original), "--precision", "fp32", "--out", str(tmp_path / "f")]
        code, stdout, _ = run_cli(argv)
    assert code in (0, 1) and str(original) in stdout  # another precision may or may not round to the same pixels
    assert "dtype=torch.float32" in caplog.text, "--precision did not override the recorded precision"
    assert read_metadata(tmp_path / "f" / "000000.png")["runtime"]["precision"] == "fp32"


def test_precision_without_the_fast_path_exits_2(tmp_path):
    argv = ["generate", "--task", "uncond", *ONE, "--precision", "fp16", "--out", str(tmp_path / "out")]
    code, stdout, stderr = run_cli(argv)
    assert code == 2 and "--precision fp16 sets the fast path's precision; add --fast" in stderr, (stdout, stderr)
    assert not (tmp_path / "out").exists()


def test_a_picture_without_runtime_replays_on_the_cpu_without_fast(generated, tmp_path):
    out, _ = generated("class2img")
    meta = read_metadata(out / "000001.png")
    del meta["runtime"]  # as written before the entry existed
    old = tmp_path / "old.png"
    write_png(old, torch.from_numpy(_pixels(out / "000001.png").copy()), meta)
    assert "runtime" not in read_metadata(old)
    code, stdout, stderr = run_cli(["generate", "--replay", str(old), "--out", str(tmp_path / "r")])
    assert code == 0 and "identical" in stdout, stdout + stderr
    assert read_metadata(tmp_path / "r" / "000000.png")["runtime"] == {"device": "cpu", "fast": False}


def test_replay_on_an_unusable_recorded_device_exits_2_unless_told_another(generated, monkeypatch, tmp_path):
    out, _ = generated("class2img")
    meta = read_metadata(out / "000000.png")
    meta["runtime"] = {"device": "cuda:999", "fast": False}
    elsewhere = tmp_path / "elsewhere.png"
    write_png(elsewhere, torch.from_numpy(_pixels(out / "000000.png").copy()), meta)
    code, _, stderr = run_cli(["generate", "--replay", str(elsewhere), "--out", str(tmp_path / "r")])
    assert code == 2 and f"{elsewhere}: recorded device 'cuda:999'" in stderr and "pass --device" in stderr, stderr
    assert not (tmp_path / "r").exists()
    code, stdout, stderr = run_cli(
        ["generate", "--replay", str(elsewhere), "--device", "cpu", "--out", str(tmp_path / "r")]
    )
    assert code == 0 and "identical" in stdout, stdout + stderr


@pytest.mark.parametrize(
    ("runtime", "expected"),
    [
        ("cpu", "metadata runtime must be a mapping"),
        ({"device": 0, "fast": False}, "metadata runtime.device must be text"),
        ({"device": "cpu", "fast": "yes"}, "metadata runtime.fast must be true or false"),
        ({"device": "tpu", "fast": False}, "recorded device 'tpu': not a device"),
        ({"device": "cpu", "fast": True, "precision": "fp8"}, "metadata runtime.precision must be one of"),
    ],
)
def test_replay_refuses_a_bad_runtime_entry(runtime, expected, generated, tmp_path):
    out, _ = generated("class2img")
    meta = read_metadata(out / "000000.png")
    meta["runtime"] = runtime
    bad = tmp_path / "bad.png"
    write_png(bad, torch.from_numpy(_pixels(out / "000000.png").copy()), meta)
    code, _, stderr = run_cli(["generate", "--replay", str(bad), "--out", str(tmp_path / "r")])
    assert code == 2 and expected in stderr and "Traceback" not in stderr, stderr


# -- replay: one picture, what it may load ----------------------------------------------------------


def _spy_generate(monkeypatch) -> list[int]:
    """The batch size of each generation replay asks for."""
    import ldmkit.generation

    sizes: list[int] = []
    real = ldmkit.generation.generate

    def spy(pipe, task, inputs, options):
        sizes.append(options.n)
        return real(pipe, task, inputs, options)

    monkeypatch.setattr(ldmkit.generation, "generate", spy)
    return sizes


def test_replay_makes_one_picture_unless_told_the_batch(generated, monkeypatch, tmp_path):
    out, _ = generated("class2img")
    sizes = _spy_generate(monkeypatch)
    code, stdout, stderr = run_cli(["generate", "--replay", str(out / "000001.png"), "--out", str(tmp_path / "r")])
    assert code == 0 and "identical" in stdout, stdout + stderr
    # the lone picture first; the recorded batch only where this CPU rounds a batch differently
    assert sizes in ([1], [1, N]), sizes
    sizes.clear()
    argv = ["generate", "--replay", str(out / "000001.png"), "--replay-batch", "--out", str(tmp_path / "b")]
    code, stdout, stderr = run_cli(argv)
    assert code == 0 and "identical" in stdout and sizes == [N], stdout + stderr
    assert read_metadata(tmp_path / "b" / "000000.png")["index"] == 1


def _copy_of_the_shipped_model(where: Path) -> Path:
    import shutil

    return Path(shutil.copytree(default_model_dir(), where / "mymodel"))


def test_a_folder_model_is_recorded_absolute_and_replays_from_elsewhere_only_when_named(inputs, monkeypatch, tmp_path):
    _copy_of_the_shipped_model(tmp_path)
    monkeypatch.chdir(tmp_path)
    argv = ["generate", "--spec", "mymodel", "--task", "class2img", "--label", "0", *ONE, "--out", "pics"]
    code, _, stderr = run_cli(argv)
    assert code == 0, stderr
    picture = tmp_path / "pics" / "000000.png"
    assert read_metadata(picture)["model"]["source"] == str(tmp_path / "mymodel")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, stderr = run_cli(["generate", "--replay", str(picture), "--out", "r"])
    assert code == 2 and f"--spec {tmp_path / 'mymodel'}" in stderr and "Traceback" not in stderr, stderr
    assert not (elsewhere / "r").exists()
    code, stdout, stderr = run_cli(["generate", "--replay", str(picture), "--spec", "../mymodel", "--out", "r"])
    assert code == 0 and "identical" in stdout, stdout + stderr


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"options": {"n": 100000}}, "options.n: Input should be less than or equal to 1024"),
        ({"index": 5}, "index 5 is past the batch of 2"),
        ({"model": {"source": "/etc", "weights_sha256": None}}, "--spec /etc"),
        ({"task": "clas2img"}, "did you mean 'class2img'"),
    ],
)
def test_replay_refuses_metadata_the_command_line_would_not_accept(change, expected, generated, tmp_path):
    out, _ = generated("class2img")
    meta = read_metadata(out / "000001.png")
    for key, value in change.items():
        meta[key] = {**meta[key], **value} if isinstance(value, dict) and key == "options" else value
    bad = tmp_path / "bad.png"
    write_png(bad, torch.from_numpy(_pixels(out / "000001.png").copy()), meta)
    code, _, stderr = run_cli(["generate", "--replay", str(bad), "--out", str(tmp_path / "r")])
    assert code == 2 and expected in stderr and "Traceback" not in stderr, stderr
    assert not (tmp_path / "r").exists()


def test_a_second_run_into_one_folder_keeps_the_first_runs_pictures(generated, inputs, tmp_path):
    out, _ = generated("class2img")
    mine = tmp_path / "out"
    argv = ["generate", "--task", "class2img", *task_args("class2img", inputs), *FAST, "--out", str(mine)]
    assert run_cli(argv)[0] == 0
    first = {p.name: p.read_bytes() for p in mine.iterdir()}
    code, stdout, _ = run_cli(argv)
    assert code == 0 and stdout.split() == [str(mine / f"{i:06d}.png") for i in range(N, 2 * N)]
    assert all((mine / name).read_bytes() == data for name, data in first.items())
