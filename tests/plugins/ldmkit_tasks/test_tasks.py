"""The task API: ``pipe.task(name).parse_request(inputs)`` and ``.run(pipe, request, SampleOptions(...))``."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

import ldmkit
from ldmkit.cli import main
from ldmkit.errors import InputError, SpecError
from ldmkit.generation import default_model_dir
from ldmkit.interfaces import SampleOptions
from ldmkit.masking import blur_fill
from ldmkit_shapes import CLASS_NAMES, ShapesDataset
from ldmkit_tasks.simple import Class2ImgTask
from ldmkit_tasks.spatial import InpaintTask
from tests.tiny import tiny_autoencoder_params, tiny_pipeline_spec, tiny_unet_params

TASKS = ("uncond", "class2img", "text2img", "layout2img", "semantic2img", "superres", "inpaint")

# A tiny untrained pipeline without a conditioner and without inpainting channels: 16x16 pictures, 8x8 latents.
TINY_SPEC = tiny_pipeline_spec(
    {"type": "kl-autoencoder", "params": tiny_autoencoder_params(channels=3, attn_resolutions=[])},
    tiny_unet_params(channels=3, channel_mult=[1], num_head_channels=32),
    version=1,
    schedule={"beta_schedule": "linear", "timesteps": 1000},
    tasks={"uncond": {"type": "uncond"}, "inpaint": {"type": "inpaint", "params": {"mode": "masked-sampling"}}},
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def shipped() -> ldmkit.Pipeline:
    return ldmkit.Pipeline.load(default_model_dir())


@pytest.fixture(scope="module")
def tiny() -> ldmkit.Pipeline:
    torch.manual_seed(0)
    return ldmkit.Pipeline.from_spec(TINY_SPEC)


@pytest.fixture(scope="module")
def sample() -> dict:
    return ShapesDataset.from_params({"seed": 3}).batch([0])


def python_inputs(task: str, b: dict) -> dict:
    """The inputs of each task as Python objects (tensors, lists) rather than file bytes."""
    return {
        "uncond": {},
        "class2img": {"label": CLASS_NAMES[int(b["class_label"][0])]},
        "text2img": {"prompt": b["caption"][0]},
        "layout2img": {"layout": b["layout"][0]},
        "semantic2img": {"segmentation": b["segmentation"][0]},
        "superres": {"image": b["lowres"][0]},
        "inpaint": {"image": b["image"][0], "mask": b["mask"][0]},
    }[task]


@pytest.mark.parametrize("task", TASKS)
def test_every_task_returns_a_batch_of_pictures_in_range(task, shipped, sample):
    t = shipped.task(task)
    assert t.name == task
    request = t.parse_request(python_inputs(task, sample))
    out = t.run(shipped, request, SampleOptions(n=2, seed=0, steps=2, guidance_scale=2.0))
    assert out.shape == (2, 3, 64, 64) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= -1 and out.max() <= 1
    assert not torch.equal(out[0], out[1]), "each picture draws its own noise"


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_file_inputs_decode_to_the_tensors_they_hold(shipped):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[8:24, 16:40] = 255
    mask[0, 0] = 100  # grey counts as keep (below the threshold)
    request = shipped.task("inpaint").parse_request({"image": _png(pixels), "mask": _png(mask)})
    expected = torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1  # (3, 64, 64)
    assert torch.equal(request.image, expected)
    assert torch.equal(request.mask, torch.from_numpy(mask > 127).float()[None])  # (1, 64, 64), 1 = fill

    seg = rng.integers(0, 4, (64, 64), dtype=np.uint8)
    request = shipped.task("semantic2img").parse_request({"segmentation": _png(seg)})
    assert request.segmentation.dtype == torch.long and torch.equal(request.segmentation, torch.from_numpy(seg).long())


def test_picture_i_of_seed_s_is_picture_0_of_seed_s_plus_i(shipped):
    # Each picture gets its own generator seeded seed + i, so a picture does not depend on the batch it
    # was made in. Batched float arithmetic may differ in the last bits from a batch of one (different
    # kernels), so equality across batch sizes is promised within float tolerance only; the same batch
    # (same n and seed) is reproduced bit for bit.
    task = shipped.task("class2img")
    request = task.parse_request({"label": "blue square"})
    opts = dict(steps=3, guidance_scale=2.0)
    batch = task.run(shipped, request, SampleOptions(n=3, seed=5, **opts))
    for i in range(3):
        single = task.run(shipped, request, SampleOptions(n=1, seed=5 + i, **opts))
        torch.testing.assert_close(batch[i], single[0], atol=1e-3, rtol=0)  # an 8-bit level is 2/255 = 7.8e-3
    assert torch.equal(batch, task.run(shipped, request, SampleOptions(n=3, seed=5, **opts)))


def test_labels_by_name_or_id(shipped):
    task = shipped.task("class2img")
    assert task.label_id("Red Circle") == task.label_id("0") == task.label_id(0) == 0
    assert task.label_id(" cyan triangle ") == CLASS_NAMES.index("cyan triangle")
    with pytest.raises(InputError, match="unknown label 'purple circle'"):
        task.label_id("purple circle")
    with pytest.raises(InputError, match="out of range"):
        task.label_id(len(CLASS_NAMES))


def _inpaint_inputs() -> dict:
    image = ShapesDataset.from_params({"seed": 4}).batch([0])["image"][0]  # (3, 64, 64)
    image = torch.nn.functional.avg_pool2d(image[None], 4)[0]  # (3, 16, 16): the tiny pipeline's size
    mask = torch.zeros(1, 16, 16)
    mask[:, 3:9, 5:13] = 1  # fill in
    return {"image": image, "mask": mask}


def test_masked_sampling_inpaints_with_a_non_inpainting_pipeline(tiny):
    assert tiny.conditioner is None and tiny.denoiser.params.in_channels == tiny.first_stage.latent_channels
    task = tiny.task("inpaint")
    assert task.params.mode == "masked-sampling"
    inputs = _inpaint_inputs()
    request = task.parse_request(inputs)
    latents = []
    decode = tiny.decode
    tiny.decode = lambda z, **kw: (latents.append(z), decode(z, **kw))[1]  # watch what gets decoded
    try:
        out = task.run(tiny, request, SampleOptions(n=2, seed=0, steps=3))
    finally:
        del tiny.decode
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()
    # the known latents are those of the input with its hole painted from the pixels around it (what is inside
    # the hole must not leak into them), batched as the task encodes
    painted = blur_fill(inputs["image"][None].repeat(2, 1, 1, 1), inputs["mask"][None].repeat(2, 1, 1, 1), 2.0)
    x0 = tiny.encode(painted)  # (2, 3, 8, 8)
    fill = torch.nn.functional.interpolate(inputs["mask"][None], size=(8, 8), mode="area") > 0  # (1, 1, 8, 8)
    known = (~fill).expand(2, 3, 8, 8)
    (z,) = latents
    assert torch.equal(z[known], x0[known]), "the known latents are the painted input's"
    assert not torch.allclose(z[~known], x0[~known]), "the hole is generated"


def test_paste_known_keeps_known_pixels_exactly(tiny):
    task = InpaintTask.from_params({"mode": "masked-sampling", "paste_known": True})
    inputs = _inpaint_inputs()
    out = task.run(tiny, task.parse_request(inputs), SampleOptions(n=2, seed=1, steps=2))
    keep = (inputs["mask"] == 0).expand(2, 3, 16, 16)
    image = inputs["image"].expand(2, -1, -1, -1)
    assert torch.equal(out[keep], image[keep])
    assert not torch.allclose(out[~keep], image[~keep])


def test_a_task_needing_a_conditioner_refuses_a_pipeline_without_one(tiny):
    task = Class2ImgTask.from_params({})
    with pytest.raises(SpecError, match="conditioner"):
        task.run(tiny, task.parse_request({"label": "3"}), SampleOptions(steps=1))
    concat = InpaintTask.from_params({"mode": "concat"})  # needs a conditioner taking the masked image
    with pytest.raises(SpecError, match="conditioner"):
        concat.run(tiny, concat.parse_request(_inpaint_inputs()), SampleOptions(steps=1))


def test_a_pipeline_names_the_tasks_it_serves(tiny, shipped):
    with pytest.raises(SpecError, match=r"does not serve task 'text2img'; it serves: inpaint, uncond"):
        tiny.task("text2img")
    with pytest.raises(SpecError) as info:
        shipped.task("img2video")
    assert all(name in str(info.value) for name in TASKS)


def test_run_refuses_an_empty_batch(tiny):
    task = tiny.task("uncond")
    with pytest.raises(InputError, match="at least 1"):
        task.run(tiny, task.parse_request({}), SampleOptions(n=0, steps=1))


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"n": 2.5}, "n"),
        ({"n": True}, "n"),
        ({"seed": "7"}, "seed"),
        ({"steps": None}, "steps"),
        ({"eta": "0"}, "eta"),
        ({"guidance_scale": [3.0]}, "guidance_scale"),
        ({"sampler": ""}, "sampler"),
        ({"progress": 1}, "progress"),
    ],
)
def test_sample_options_of_the_wrong_kind_are_refused(options, field):
    with pytest.raises(InputError, match=rf"SampleOptions\.{field}: must be"):
        SampleOptions(**options)


def test_sample_options_take_numpy_scalars_as_python_numbers():
    options = SampleOptions(n=np.int64(2), steps=np.int32(5), guidance_scale=np.float32(3.5), eta=0)
    assert (options.n, options.steps, options.guidance_scale, options.eta) == (2, 5, 3.5, 0.0)
    assert type(options.n) is int and type(options.guidance_scale) is float and type(options.eta) is float


@pytest.mark.parametrize(
    ("task", "inputs", "message"),
    [
        ("uncond", {"prompt": "a red circle"}, "task 'uncond' takes no inputs; it does not read prompt"),
        (
            "class2img",
            {"label": "red circle", "mask": b""},
            "task 'class2img' takes label, negative_label; it does not read mask",
        ),
        ("text2img", "a red circle", "task 'text2img': inputs must be a dict \\(prompt, negative_prompt\\), got str"),
    ],
)
def test_inputs_a_task_does_not_read_are_refused(task, inputs, message):
    pipe = ldmkit.Pipeline.load(default_model_dir())
    with pytest.raises(InputError, match=message):
        pipe.task(task).parse_request(inputs)


# -- ldmkit tasks ------------------------------------------------------------------------------------
def _cli(argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``ldmkit ARGV`` run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_tasks_command_lists_every_task_with_its_request_fields():
    code, stdout, stderr = _cli(["tasks", "--json"])
    assert code == 0, stderr
    tasks = {task["name"]: task for task in json.loads(stdout)}
    registry = ldmkit.get_registry()
    assert sorted(tasks) == registry.names("task")
    for name, task in tasks.items():
        fields = registry.get("task", name).Request.model_fields
        assert [field["name"] for field in task["inputs"]] == list(fields)
        assert all(field["description"] == fields[field["name"]].description for field in task["inputs"])
    inpaint = {field["name"]: field for field in tasks["inpaint"]["inputs"]}
    assert {k: (v["kind"], v["takes_file"], v["required"]) for k, v in inpaint.items()} == {
        "image": ("picture", True, True),
        "mask": ("mask", True, True),
    }
    assert tasks["uncond"]["inputs"] == [] and tasks["class2img"]["inputs"][0]["kind"] == "label"


def test_tasks_command_describes_one_task_and_refuses_unknown_ones():
    code, stdout, stderr = _cli(["tasks", "superres"])
    assert code == 0, stderr
    assert stdout.startswith("superres: ") and "image" in stdout and "--input image=@PATH" in stdout
    assert "inpaint" not in stdout
    code, _, stderr = _cli(["tasks", "inpiant"])
    assert code == 2 and "unknown task type 'inpiant'. Did you mean 'inpaint'?" in stderr, stderr
