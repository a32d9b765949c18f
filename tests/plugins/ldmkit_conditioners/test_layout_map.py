"""The layout conditioner's box map (concat slot) and init_grow, which gives a trained denoiser new inputs."""

from __future__ import annotations

import pytest
import torch

import ldmkit
from ldmkit.checkpoints import save_state_dict
from ldmkit.errors import InputError, SpecError
from ldmkit.training.grow import grown
from ldmkit_conditioners.box_map import box_map
from ldmkit_conditioners.layout import LayoutConditioner
from tests.tiny import tiny_unet_params

NAMES = ["red circle", "blue square", "green triangle"]


def layout_conditioner(**overrides) -> LayoutConditioner:
    params = {"n_classes": 3, "class_names": NAMES, "coord_bins": 17, "max_objects": 3, "n_embed": 16}
    params |= {"n_layer": 1, "coordinates": "separate", "spatial_map": [4, 4]} | overrides
    return LayoutConditioner.from_params(params)


def test_box_map_holds_the_covered_share_of_each_cell():
    labels = torch.tensor([[1, -1]])  # one box of class 1, one empty slot
    boxes = torch.tensor([[[0.125, 0.0, 0.5, 0.25], [0.0, 0.0, 1.0, 1.0]]])  # x0, y0, x1, y1
    out = box_map(labels, boxes, n_classes=2, size=(4, 4))  # cells of 0.25
    expected = torch.zeros(1, 2, 4, 4)
    expected[0, 1, 0, 0] = 0.5  # the box covers the right half of the first cell
    expected[0, 1, 0, 1] = 1.0
    assert torch.equal(out, expected)


def test_box_map_clamps_overlaps_and_keeps_classes_apart():
    labels = torch.tensor([[0, 0, 1]])
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]])
    out = box_map(labels, boxes, n_classes=2, size=(2, 2))
    assert torch.equal(out[0, 0], torch.ones(2, 2))  # two boxes of class 0 overlap: still 1
    assert torch.equal(out[0, 1], torch.tensor([[0.0, 0.0], [0.0, 1.0]]))


def test_layout_conditioner_fills_concat_with_the_map():
    cond = layout_conditioner()
    assert cond.slots == ("crossattn", "concat")
    layouts = [[{"label": "blue square", "box": [0.0, 0.5, 0.5, 1.0]}], [{"label": 0, "box": [0.25, 0.0, 1.0, 0.25]}]]
    out = cond(layouts)
    assert out.crossattn.shape == (2, 15, 16)
    assert out.concat.shape == (2, 3, 4, 4)
    assert out.concat[0, 1].sum() == 4 and out.concat[0, 1, 2:, :2].sum() == 4  # bottom-left quarter
    assert out.concat[1, 0, 0].tolist() == [0.0, 1.0, 1.0, 1.0]
    assert out.concat[:, 2].abs().sum() == 0
    # tokens on the coordinate grid (16 steps) describe the same boxes
    assert torch.equal(cond(cond.tokenize(layouts)).concat, out.concat)
    empty = cond.unconditional(2)
    assert empty.concat.shape == (2, 3, 4, 4) and empty.concat.abs().sum() == 0


def test_corner_cell_tokens_give_boxes_back():
    cond = layout_conditioner(coordinates="corner-cells", coord_bins=5)
    layouts = [[{"label": 2, "box": [0.25, 0.5, 0.75, 1.0]}, {"label": 1, "box": [0.0, 0.0, 0.5, 0.25]}]]
    labels, boxes = cond.boxes_from_tokens(cond.tokenize(layouts))
    assert labels.tolist() == [[2, 1, -1]]
    assert torch.allclose(boxes[0, :2], torch.tensor([[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.5, 0.25]]))


def test_without_spatial_map_only_tokens():
    cond = layout_conditioner(spatial_map=None)
    assert cond.slots == ("crossattn",)
    assert cond([[{"label": 0, "box": [0.0, 0.0, 0.5, 0.5]}]]).concat is None


def test_layout_errors_name_the_object():
    cond = layout_conditioner()
    with pytest.raises(InputError, match="layout object 0"):
        cond([[{"label": 0, "box": [0.5, 0.0, 0.2, 0.5]}]])
    with pytest.raises(InputError, match="unknown label"):
        cond([[{"label": "purple circle", "box": [0.0, 0.0, 0.5, 0.5]}]])


# -- init_grow ------------------------------------------------------------------------------------------


def unet(in_channels: int):
    params = tiny_unet_params(channels=3, in_channels=in_channels, attention_resolutions=[2], num_head_channels=32)
    return ldmkit.get_registry().create("denoiser", "unet", params)


def test_grown_input_channels_start_with_no_effect(tmp_path):
    torch.manual_seed(0)
    small = unet(3)
    with torch.no_grad():
        for p in small.parameters():  # a fresh UNet predicts zeros; make it compute something
            p.normal_(0, 0.05)
    path = tmp_path / "denoiser.safetensors"
    save_state_dict(small.state_dict(), path)
    big = unet(7)
    big.load_state_dict(grown(["denoiser.input_blocks.0.0.weight"], big, path))
    x, extra, t = torch.randn(2, 3, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    cond = ldmkit.Conditioning()
    with torch.no_grad():
        expected = small(x, t, cond)
        assert expected.abs().mean() > 1e-3
        out = big(x, t, ldmkit.Conditioning(concat=extra))  # the UNet concatenates concat after x
    assert torch.allclose(out, expected, atol=1e-6)


def test_init_grow_refuses_what_cannot_grow(tmp_path):
    path = tmp_path / "denoiser.safetensors"
    save_state_dict(unet(7).state_dict(), path)
    small = unet(3)
    with pytest.raises(SpecError, match="no axis smaller"):
        grown(["denoiser.input_blocks.0.0.weight"], small, path)
    with pytest.raises(SpecError, match="must be 'denoiser.<key>'"):
        grown(["denoiser.input_blocks.0.0.nothing"], small, path)
    with pytest.raises(SpecError, match="must be 'denoiser.<key>'"):
        grown(["conditioner.parts.x"], small, path)
