"""ldmkit.testing's TaskConformance and DatasetConformance on the built-in tasks and the Shapes dataset,
and on broken stand-ins that must fail the matching check."""

from __future__ import annotations

import functools
import io
import json
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import Field

import ldmkit
from ldmkit.generation import default_model_dir
from ldmkit.registry import PluginInfo, Registry
from ldmkit.tasks import ConditionedTask, Request
from ldmkit.testing import DatasetConformance, TaskConformance
from ldmkit_shapes import ShapesDataset
from tests.tiny import tiny_pipeline_spec, tiny_unet_params

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
FAILED = (AssertionError, pytest.fail.Exception)


@functools.cache
def shipped() -> ldmkit.Pipeline:
    return ldmkit.Pipeline.load(default_model_dir())


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


SAMPLE = ShapesDataset.from_params({"seed": 3}).batch([0])
PICTURE = ((SAMPLE["image"][0].permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()  # (64, 64, 3)
LOWRES = ((SAMPLE["lowres"][0].permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()  # (16, 16, 3)
MASK = (SAMPLE["mask"][0, 0].numpy() * 255).astype(np.uint8)  # (64, 64), white = fill in
SEGMENTATION = SAMPLE["segmentation"][0].numpy().astype(np.uint8)  # (64, 64) class ids
LAYOUT = SAMPLE["layout"][0]


class _Shipped(TaskConformance):
    """A built-in task with the params the shipped Shapes model gives it."""

    def make_pipeline(self) -> ldmkit.Pipeline:
        return shipped()

    @property
    def params(self) -> dict[str, Any]:  # type: ignore[override]
        return shipped().task(self.cls().name).params.model_dump()


class TestUncond(_Shipped):
    component_cls = ldmkit.get_registry().get("task", "uncond")
    valid_request: dict[str, Any] = {}
    cli_inputs: dict[str, Any] = {}
    bad_inputs = [{"prompt": "a red circle"}]


class TestClass2Img(_Shipped):
    component_cls = ldmkit.get_registry().get("task", "class2img")
    valid_request = {"label": 3}
    invalid_requests = [{}, {"label": [1]}]
    cli_inputs = {"label": "blue square"}
    bad_inputs = [{"label": "purple circle"}, {"label": "99"}, {}, {"label": "1", "mask": b"x"}]


class TestText2Img(_Shipped):
    component_cls = ldmkit.get_registry().get("task", "text2img")
    valid_request = {"prompt": SAMPLE["caption"][0]}
    invalid_requests = [{"prompt": ""}, {}]
    cli_inputs = {"prompt": SAMPLE["caption"][0]}
    bad_inputs = [{"prompt": ""}, {"prompt": 3}, {}]


class TestLayout2Img(_Shipped):
    component_cls = ldmkit.get_registry().get("task", "layout2img")
    valid_request = {"layout": LAYOUT}
    invalid_requests = [{"layout": []}, {"layout": [{"label": 1, "box": [0.5, 0.5, 0.1, 0.1]}]}]
    cli_inputs = {"layout": json.dumps(LAYOUT)}
    bad_inputs = [
        {"layout": "not json"},
        {"layout": json.dumps([{"label": 1, "box": [0, 0, 2, 1]}])},
        {"layout": json.dumps([{"label": "purple star", "box": [0, 0, 1, 1]}])},  # refused by the conditioner
    ]


class TestSemantic2Img(_Shipped):
    component_cls = ldmkit.get_registry().get("task", "semantic2img")
    valid_request = {"segmentation": SAMPLE["segmentation"][0]}
    cli_inputs = {"segmentation": _png(SEGMENTATION)}
    bad_inputs = [
        {"segmentation": b"not a picture"},
        {"segmentation": _png(np.full((64, 64), 9, np.uint8))},  # class 9 of 4
        {"segmentation": _png(SEGMENTATION[:40, :40])},  # a size the model cannot tile (sides of 16s), found by run
    ]


class TestSuperres(_Shipped):
    component_cls = ldmkit.get_registry().get("task", "superres")
    valid_request = {"image": SAMPLE["lowres"][0]}
    cli_inputs = {"image": _png(LOWRES)}
    # out of range; 10x10 makes 40x40 pictures, which the model cannot tile (sides of 16s)
    bad_inputs = [{"image": SAMPLE["lowres"][0] * 3}, {"image": _png(LOWRES[:10, :10])}]


class TestInpaint(_Shipped):
    component_cls = ldmkit.get_registry().get("task", "inpaint")
    valid_request = {"image": SAMPLE["image"][0], "mask": SAMPLE["mask"][0]}
    cli_inputs = {"image": _png(PICTURE), "mask": _png(MASK)}
    bad_inputs = [{"image": _png(PICTURE)}, {"image": _png(PICTURE), "mask": _png(MASK[:32])}]


class TestShapesDataset(DatasetConformance):
    component_cls = ShapesDataset
    params = {"seed": 3, "size": 10}
    length = 10
    item_shapes = {"image": (3, 64, 64), "segmentation": (64, 64), "lowres": (3, 16, 16), "mask": (1, 64, 64)}
    value_ranges = {"image": (-1, 1), "lowres": (-1, 1), "mask": (0, 1), "segmentation": (0, 3)}


# -- broken stand-ins fail the matching check ------------------------------------------------------
class CountRequest(Request):
    count: int = Field(ge=1, le=9)


class CountTask(ConditionedTask):
    """Unconditional pictures on a pipeline without conditioner; reads ``--count``."""

    name = "count-standin"
    Request = CountRequest
    inputs = ("count",)


class StrictCountTask(CountTask):
    def build_request(self, inputs: dict[str, Any]) -> Any:
        return CountRequest.model_validate(inputs, strict=True)  # "3" from the CLI is refused


class LeakyCountTask(CountTask):
    def build_request(self, inputs: dict[str, Any]) -> Any:
        return CountRequest(**inputs)  # a pydantic ValidationError reaches the caller


class UnclampedTask(CountTask):
    def run(self, pipeline, request, options) -> torch.Tensor:
        return 2 * super().run(pipeline, request, options)


class GreyTask(CountTask):
    def run(self, pipeline, request, options) -> torch.Tensor:
        return super().run(pipeline, request, options)[:, :1]  # one channel


class UnseededTask(CountTask):
    def run(self, pipeline, request, options) -> torch.Tensor:
        seed = int(torch.randint(0, 1000, ()))
        return super().run(pipeline, request, ldmkit.SampleOptions(n=options.n, steps=options.steps, seed=seed))


class _Tasks:
    @ldmkit.hookimpl
    def register_tasks(self, register) -> None:
        register(CountTask)


TASKS = Registry(strict=True)
TASKS.add_plugin(_Tasks(), PluginInfo("standins", "(tests)", "0"))
UNCONDITIONED = tiny_pipeline_spec(
    {"type": "identity", "params": {"channels": 3}},
    tiny_unet_params(channels=3, channel_mult=[1], num_head_channels=32),
)


@functools.cache
def unconditioned() -> ldmkit.Pipeline:
    torch.manual_seed(0)
    return ldmkit.Pipeline.from_spec(UNCONDITIONED)


class _CountCase(TaskConformance):
    valid_request = {"count": 3}
    invalid_requests = [{"count": 0}, {}]
    cli_inputs = {"count": "3"}
    bad_inputs = [{"count": "zero"}, {"count": "12"}, {}]

    def registry(self) -> Registry:
        return TASKS

    def make_pipeline(self) -> ldmkit.Pipeline:
        return unconditioned()


class TestCountStandIn(_CountCase):
    component_cls = CountTask


@pytest.mark.parametrize(
    ("component", "check"),
    [
        (StrictCountTask, "test_parses_cli_inputs"),
        (LeakyCountTask, "test_bad_inputs_are_input_errors"),
        (UnclampedTask, "test_run_returns_pictures"),
        (GreyTask, "test_run_returns_pictures"),
        (UnseededTask, "test_run_is_seeded"),
    ],
)
def test_task_checks_catch_faults(component, check) -> None:
    case = type("Case", (_CountCase,), {"component_cls": component})()
    with pytest.raises(FAILED):
        getattr(case, check)()


class UnseededShapes(ShapesDataset):
    def __getitem__(self, i: int) -> dict[str, Any]:
        item = super().__getitem__(i)
        return {**item, "image": (item["image"] + 0.01 * torch.randn(item["image"].shape)).clamp(-1, 1)}


class SeedIgnoringShapes(ShapesDataset):
    def __getitem__(self, i: int) -> dict[str, Any]:
        return ShapesDataset.from_params({**self.params.model_dump(), "seed": 0})[i]


class OutOfRangeShapes(ShapesDataset):
    def __getitem__(self, i: int) -> dict[str, Any]:
        item = super().__getitem__(i)
        return {**item, "image": (item["image"] + 1) * 127.5}  # 0..255 where [-1, 1] is declared


class EndlessShapes(ShapesDataset):
    def __getitem__(self, i: int) -> dict[str, Any]:
        return super().__getitem__(int(i) % len(self))  # never raises IndexError: iteration never stops


@pytest.mark.parametrize(
    ("component", "check"),
    [
        (UnseededShapes, "test_deterministic"),
        (SeedIgnoringShapes, "test_seed_changes_items"),
        (OutOfRangeShapes, "test_values_in_range"),
        (EndlessShapes, "test_length"),
        (ShapesDataset, "test_registered_elsewhere"),
    ],
)
def test_dataset_checks_catch_faults(component, check) -> None:
    attrs = {"component_cls": component}
    if check == "test_registered_elsewhere":
        attrs["registry"], check = (lambda self: Registry()), "test_registered"
    case = type("Case", (TestShapesDataset,), attrs)()
    with pytest.raises((*FAILED, ldmkit.UnknownComponentError)):
        getattr(case, check)()


def test_dataset_shapes_must_be_declared() -> None:
    case = type("Case", (DatasetConformance,), {"component_cls": ShapesDataset, "params": {"size": 4}})()
    with pytest.raises(pytest.fail.Exception, match="item_shapes"):
        case.test_items_have_the_declared_shapes()
    wrong = type("Case", (TestShapesDataset,), {"item_shapes": {"image": (3, 32, 32)}})()
    with pytest.raises(FAILED):
        wrong.test_items_have_the_declared_shapes()
