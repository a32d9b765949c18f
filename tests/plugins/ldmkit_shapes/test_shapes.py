"""The Shapes world: spec invariants, determinism, dataset tensors, export, and the parser and metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import ldmkit
from ldmkit.errors import InputError, SpecError
from ldmkit_shapes import (
    CLASS_NAMES,
    COLOURS,
    SHAPES,
    Scene,
    ShapeObject,
    ShapesDataset,
    export,
    parse_picture,
    render,
    sample_scene,
    segmentation,
)
from ldmkit_shapes import metrics as M
from ldmkit_shapes.parse import analyse_picture, connected_components
from ldmkit_shapes.world import coverage

N_PARSE = 500


def _scenes(n: int, seed: int, **params) -> list[Scene]:
    ds = ShapesDataset.from_params({"seed": seed, **params})
    return [ds.scene(i) for i in range(n)]


def _blur(pictures: list[np.ndarray]) -> list[np.ndarray]:
    """3x3 binomial blur, edges replicated."""
    x = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).float()  # (N, 3, H, W)
    k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    x = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    y = torch.nn.functional.conv2d(x, k.expand(3, 1, 3, 3), groups=3)
    return list(y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())


# -- registration and params -------------------------------------------------------------------------


def test_registered_as_dataset():
    assert ldmkit.get_registry().get("dataset", "shapes") is ShapesDataset
    ds = ldmkit.get_registry().create("dataset", "shapes", {"seed": 3, "size": 7})
    assert isinstance(ds, ShapesDataset) and len(ds) == 7


@pytest.mark.parametrize(
    "bad",
    [{"min_objects": 3, "max_objects": 2}, {"max_objects": 4}, {"seed": -1}, {"nope": 1}, {"mask_min": 50}],
)
def test_bad_params_raise_spec_error(bad):
    with pytest.raises(SpecError):
        ShapesDataset.from_params(bad)


def test_index_out_of_range_is_typed_and_stops_iteration():
    ds = ShapesDataset.from_params({"size": 3})
    with pytest.raises(InputError):
        ds[3]
    assert len(list(ds)) == 3
    assert ds[-1]["caption"] == ds[2]["caption"]


# -- the world spec ---------------------------------------------------------------------------------


def test_class_names_and_labels():
    assert len(CLASS_NAMES) == 18 == len(SHAPES) * len(COLOURS)
    for si, shape in enumerate(SHAPES):
        for ci, colour in enumerate(COLOURS):
            obj = ShapeObject(shape, colour, 0, 0, 12)
            assert obj.label == si * 6 + ci
            assert obj.name == f"{colour} {shape}" == CLASS_NAMES[obj.label]
    assert SHAPES == ("circle", "square", "triangle")
    assert list(COLOURS) == ["red", "green", "blue", "yellow", "magenta", "cyan"]
    assert COLOURS["yellow"] == (235, 200, 30)


def test_bad_objects_raise_input_error():
    with pytest.raises(InputError):
        ShapeObject("hexagon", "red", 0, 0, 12)
    with pytest.raises(InputError):
        ShapeObject("circle", "orange", 0, 0, 12)
    with pytest.raises(InputError):
        ShapeObject("circle", "red", 50, 0, 20)  # sticks out on the right


def test_sampled_scenes_obey_the_spec():
    scenes = _scenes(300, seed=11)
    counts = set()
    for scene in scenes:
        counts.add(len(scene.objects))
        assert 215 <= scene.background <= 250
        boxes = [o.box for o in scene.objects]
        for k, o in enumerate(scene.objects):
            assert 12 <= o.side <= 28
            assert 0 <= o.x and o.x + o.side <= 64 and 0 <= o.y and o.y + o.side <= 64
            for b in boxes[k + 1 :]:  # at least 2 background pixels between boxes, along x or y
                a = o.box
                assert a[2] + 2 <= b[0] or b[2] + 2 <= a[0] or a[3] + 2 <= b[1] or b[3] + 2 <= a[1]
        img = render(scene)
        outside = np.ones((64, 64), dtype=bool)
        for o in scene.objects:
            outside[o.y : o.y + o.side, o.x : o.x + o.side] = False
            cx, cy = o.x + o.side // 2, o.y + o.side // 2
            assert tuple(img[cy, cx]) == COLOURS[o.colour]
        assert (img[outside] == scene.background).all()
        assert [o.centre for o in scene.objects] == sorted(o.centre for o in scene.objects)
    assert counts == {1, 2, 3}


def test_shapes_geometry():
    for side in (12, 17, 28):
        circle, square, triangle = (coverage(s, side) for s in SHAPES)
        assert (square == 1).all()
        assert circle.mean() == pytest.approx(math.pi / 4, abs=0.02)
        assert triangle.mean() == pytest.approx(0.5, abs=0.01)
        for cov in (circle, triangle):
            np.testing.assert_array_equal(cov, cov[:, ::-1])  # left-right symmetric
        np.testing.assert_array_equal(circle, circle.T)
        # triangle: base is the bottom row (full but the antialiased corners), apex at the top centre
        assert (triangle[-1, 1:-1] == 1).all() and triangle[0].max() <= 0.5
        assert triangle[0].argmax() in (side // 2 - 1, side // 2)
        assert triangle[: side // 2].sum() < triangle[side // 2 :].sum() / 2


def test_render_is_antialiased():
    scene = Scene(230, (ShapeObject("circle", "blue", 10, 10, 20),))
    img = render(scene).astype(int)
    edge_levels = {tuple(p) for p in img.reshape(-1, 3)} - {(230, 230, 230), COLOURS["blue"]}
    assert len(edge_levels) >= 5  # intermediate blends at the edge
    cov = coverage("circle", 20)
    expected = np.rint(230 + cov[..., None] * (np.array(COLOURS["blue"]) - 230))
    np.testing.assert_array_equal(img[10:30, 10:30], expected)


def test_segmentation_follows_coverage():
    objects = (
        ShapeObject("circle", "red", 2, 2, 15),
        ShapeObject("square", "green", 30, 2, 12),
        ShapeObject("triangle", "cyan", 20, 30, 25),
    )
    seg = segmentation(Scene(240, objects))
    for k, o in enumerate(objects):
        region = seg[o.y : o.y + o.side, o.x : o.x + o.side]
        np.testing.assert_array_equal(region, np.where(coverage(o.shape, o.side) >= 0.5, k + 1, 0))
    assert seg.sum() == sum((k + 1) * (coverage(o.shape, o.side) >= 0.5).sum() for k, o in enumerate(objects))


def test_caption_wording_and_layout():
    red = ShapeObject("circle", "red", 0, 0, 12)
    blue = ShapeObject("square", "blue", 20, 40, 20)  # centre x 30
    green = ShapeObject("triangle", "green", 44, 0, 16)  # centre x 52
    assert Scene(230, (red,)).caption == "a red circle"
    assert Scene(230, (blue, red)).caption == "a red circle and a blue square"
    assert Scene(230, (green, red, blue)).caption == "a red circle, a blue square and a green triangle"
    layout = Scene(230, (blue,)).layout
    assert layout == [{"label": blue.label, "box": [20 / 64, 40 / 64, 40 / 64, 60 / 64]}]
    assert Scene(230, (red, blue)).labels == [red.label, blue.label]


# -- determinism --------------------------------------------------------------------------------------


def test_sample_is_a_pure_function_of_seed_and_index():
    a = ShapesDataset.from_params({"seed": 5})
    b = ShapesDataset.from_params({"seed": 5})
    first = a[123]
    for i in (7, 0, 999):  # other samples in between change nothing
        a[i]
    again, other = a[123], b[123]
    for key in ("image", "segmentation", "lowres", "mask"):
        assert torch.equal(first[key], again[key]) and torch.equal(first[key], other[key])
    assert first["caption"] == other["caption"] and first["layout"] == other["layout"]
    c = ShapesDataset.from_params({"seed": 6})
    assert not all(torch.equal(a[i]["image"], c[i]["image"]) for i in range(5))
    assert not torch.equal(a[0]["image"], a[1]["image"])
    rng1, rng2 = np.random.default_rng([1, 2]), np.random.default_rng([1, 2])
    assert sample_scene(rng1) == sample_scene(rng2)


# -- dataset tensors ----------------------------------------------------------------------------------


def test_sample_tensors():
    ds = ShapesDataset.from_params({"seed": 2})
    for i in range(20):
        s = ds[i]
        scene, (x0, y0, x1, y1) = ds.draw(i)
        assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.float32
        assert s["image"].min() >= -1 and s["image"].max() <= 1
        pic = torch.from_numpy(render(scene)).permute(2, 0, 1).float()
        torch.testing.assert_close(s["image"], pic / 127.5 - 1, rtol=0, atol=1e-6)
        assert s["segmentation"].dtype == torch.long
        assert torch.equal(s["segmentation"], torch.from_numpy(segmentation(scene)).long())
        # lowres is the 4x area-downsampled image
        blocks = s["image"].reshape(3, 16, 4, 16, 4)
        torch.testing.assert_close(s["lowres"], blocks.mean(dim=(2, 4)))
        assert s["mask"].shape == (1, 64, 64)
        assert 16 <= x1 - x0 <= 40 and 16 <= y1 - y0 <= 40 and x1 <= 64 and y1 <= 64
        assert s["mask"].sum() == (x1 - x0) * (y1 - y0) and (s["mask"][0, y0:y1, x0:x1] == 1).all()
        assert s["caption"] == scene.caption and s["layout"] == scene.layout
        largest = max(o.side for o in scene.objects)
        assert s["class_label"] == next(o.label for o in scene.objects if o.side == largest)


def test_single_object_scenes():
    ds = ShapesDataset.from_params({"seed": 4, "single_object": True})
    assert all(len(ds.scene(i).objects) == 1 for i in range(50))
    half = ShapesDataset.from_params({"seed": 4, "single_object_fraction": 0.5})
    singles = sum(len(half.scene(i).objects) == 1 for i in range(200))
    assert 100 < singles < 170  # half forced to one, a third of the rest has one anyway


def test_multi_object_label_pairs_class_labels_with_one_object_scenes():
    plain = ShapesDataset.from_params({"seed": 5, "size": 300})
    paired = ShapesDataset.from_params({"seed": 5, "size": 300, "multi_object_label": 18})
    labels, plain_labels = paired.batch(range(300))["class_label"], plain.batch(range(300))["class_label"]
    counts = torch.tensor([len(paired.scene(i).objects) for i in range(300)])
    single = counts == 1
    assert 50 < int(single.sum()) < 250  # both kinds of scene are drawn
    # one object: the object's class; several: the null label, never one of the 18 classes
    assert torch.equal(labels[single], plain_labels[single]) and bool((labels[single] < 18).all())
    assert bool((labels[~single] == 18).all())
    # the option changes the labels only: pictures and every other field are the same samples
    assert torch.equal(paired.batch(range(20))["image"], plain.batch(range(20))["image"])
    assert paired[int(torch.nonzero(~single)[0])]["class_label"] == 18


def test_multi_object_label_must_lie_outside_the_classes():
    with pytest.raises(SpecError, match="multi_object_label"):
        ShapesDataset.from_params({"multi_object_label": 3})  # a real class would mislabel the scenes


def test_shapes_train_spec_pairs_labels_with_the_null_class():
    """ldm.yaml's multi-object label is its label part's null class, so those samples are unconditional."""
    from ldmkit.training.spec import load_train_spec

    spec = load_train_spec(Path(__file__).resolve().parents[3] / "examples" / "shapes" / "ldm.yaml")
    label_part = spec.pipeline.conditioner.params["parts"]["label"]
    assert spec.dataset.params["multi_object_label"] == label_part["params"]["null_class"]


def test_batch_and_collate_match_items():
    ds = ShapesDataset.from_params({"seed": 9, "size": 10})
    indices = [3, 1, 4, 1, 5]
    fast = ds.batch(indices)
    slow = ShapesDataset.collate([ds[i] for i in indices])
    loader = torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=ShapesDataset.collate)
    first = next(iter(loader))
    for key in ("image", "class_label", "segmentation", "lowres", "mask"):
        assert torch.equal(fast[key], slow[key])
        assert first[key].shape[0] == 5 and torch.equal(first[key][1], ds.batch([1])[key][0])
    assert fast["class_label"].dtype == torch.long and fast["class_label"].shape == (5,)
    assert fast["caption"] == slow["caption"] and fast["layout"] == slow["layout"]


# -- export ---------------------------------------------------------------------------------------------


def test_export_writes_pngs_that_reload_identically(tmp_path):
    from PIL import Image

    path = export(tmp_path, 6, seed=13)
    records = json.loads(path.read_text())["samples"]
    ds = ShapesDataset.from_params({"seed": 13})
    assert len(records) == 6
    for rec in records:
        scene = ds.scene(rec["index"])
        np.testing.assert_array_equal(np.array(Image.open(tmp_path / rec["image"])), render(scene))
        np.testing.assert_array_equal(np.array(Image.open(tmp_path / rec["segmentation"])), segmentation(scene))
        assert rec["caption"] == scene.caption and rec["layout"] == scene.layout
        rebuilt = Scene(
            rec["background"],
            tuple(ShapeObject(**{k: v for k, v in o.items() if k != "label"}) for o in rec["objects"]),
        )
        assert rebuilt == scene


# -- parser and metrics ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def multi():
    scenes = _scenes(N_PARSE, seed=21)
    return scenes, M.parse_all([render(s) for s in scenes])


def test_parser_is_accurate_on_shapes_pictures(multi):
    scenes, parses = multi
    singles = _scenes(N_PARSE, seed=22, single_object=True)
    assert M.class_accuracy([render(s) for s in singles], [s.main_object.label for s in singles]) >= 0.99
    assert M.caption_exact_match(parses, [s.caption for s in scenes]) >= 0.97
    assert M.layout_iou(parses, [s.layout for s in scenes]) >= 0.9
    assert M.semantic_fg_iou(parses, [segmentation(s) for s in scenes]) >= 0.95
    assert M.valid_scene_rate(parses) >= 0.98


def test_parser_tolerates_blur_and_noise():
    scenes = _scenes(100, seed=23)
    rng = np.random.default_rng(0)
    noisy = [
        np.clip(p + rng.normal(0, 4, p.shape), 0, 255).astype(np.uint8) for p in _blur([render(s) for s in scenes])
    ]
    parses = M.parse_all(noisy)
    assert M.caption_exact_match(parses, [s.caption for s in scenes]) >= 0.95
    assert M.layout_iou(parses, [s.layout for s in scenes]) >= 0.85


def test_parsed_object_fields():
    scene = Scene(225, (ShapeObject("triangle", "magenta", 5, 30, 20), ShapeObject("circle", "yellow", 40, 6, 14)))
    objs = parse_picture(render(scene))
    assert [o.name for o in objs] == ["magenta triangle", "yellow circle"]
    assert [o.box for o in objs] == [tuple(o.box_fraction) for o in scene.objects]
    assert [o.label for o in objs] == scene.labels


def test_metrics_fail_on_wrong_pictures(multi):
    scenes, parses = multi
    shifted = [s.caption for s in scenes[1:]] + [scenes[0].caption]
    assert M.caption_exact_match(parses, shifted) < 0.3
    wrong = [(lab + 1) % 18 for lab in (s.main_object.label for s in scenes)]
    assert M.class_accuracy(parses, wrong) < 0.3
    blank = np.full((64, 64, 3), 233, dtype=np.uint8)
    assert parse_picture(blank) == []
    assert M.layout_iou([blank], [scenes[0].layout]) == 0.0
    assert M.valid_scene_rate([blank]) == 0.0
    orange = render(Scene(233, (ShapeObject("square", "red", 10, 10, 20),)))
    orange[10:30, 10:30] = (250, 140, 20)
    assert M.valid_scene_rate([orange]) == 0.0
    red, blue = ShapeObject("square", "red", 10, 10, 20), ShapeObject("square", "blue", 25, 15, 20)
    assert M.valid_scene_rate([render(Scene(233, (red, blue)))]) == 0.0  # overlapping: red is no longer a square
    four = render(Scene(233, tuple(ShapeObject("square", "red", x, y, 14) for x in (4, 40) for y in (4, 40))))
    assert len(parse_picture(four)) == 4 and M.valid_scene_rate([four]) == 0.0
    noisy_bg = render(scenes[0]).copy()
    noisy_bg[50:54, 2:6] = (20, 20, 20)  # a dark speck
    assert not analyse_picture(noisy_bg).valid


def test_metrics_accept_model_output_tensors():
    ds = ShapesDataset.from_params({"seed": 31})
    batch = ds.batch(range(8))
    assert M.caption_exact_match(batch["image"], batch["caption"]) == 1.0
    assert M.semantic_fg_iou(batch["image"], batch["segmentation"]) == 1.0
    with pytest.raises(InputError):
        M.caption_exact_match(batch["image"], batch["caption"][:3])
    with pytest.raises(InputError):
        M.valid_scene_rate(torch.zeros(2, 1, 64, 64))


def test_psnr():
    a = np.zeros((64, 64, 3), dtype=np.uint8)
    assert M.psnr(a, a) == math.inf
    b = a + 5
    assert M.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 25))
    c = b.copy()
    c[:32] = 100
    mask = np.zeros((64, 64))
    mask[32:] = 1
    assert M.psnr(a, c, mask=mask) == pytest.approx(M.psnr(a, b))
    x = torch.zeros(2, 3, 8, 8)
    assert M.psnr(x, x + 0.2) == pytest.approx(10 * math.log10(4 / 0.04))  # float images span [-1, 1]
    with pytest.raises(InputError):
        M.psnr(a, a[:10])


def test_connected_components_respect_groups():
    groups = np.array([[0, 0, -1, 1], [-1, 0, -1, 1], [2, -1, -1, -1], [2, 2, -1, 0]])
    labels, count = connected_components(groups)
    assert count == 4
    assert labels[0, 0] == labels[0, 1] == labels[1, 1] != labels[3, 3]
    assert labels[2, 0] == labels[3, 1] and labels[0, 2] == 0
    assert len({labels[0, 0], labels[0, 3], labels[2, 0], labels[3, 3]}) == 4
