"""Tasks with spatial inputs: layout2img, semantic2img, superres, inpaint."""

from __future__ import annotations

from typing import Any, Literal, cast

import torch.nn.functional as F
from pydantic import BaseModel, Field, model_validator

from ldmkit.inputs import Layout, Mask, Picture, SegmentationMap
from ldmkit.masking import blur_fill
from ldmkit.tasks import ConditionedTask, Request, TaskParams


class LayoutRequest(Request):
    layout: Layout = Field(description="1 to 16 labelled boxes; labels are the conditioner's class names or ids")


class Layout2ImgTask(ConditionedTask):
    """Layout-to-image generation from labelled boxes."""

    name = "layout2img"
    feeds = ("layout",)
    Request = LayoutRequest

    def raw_input(self, pipeline: Any, request: BaseModel, n: int) -> Any:
        objects = [obj.model_dump() for obj in cast(LayoutRequest, request).layout]
        return [list(objects) for _ in range(n)]


class SemanticParams(TaskParams):
    n_classes: int = Field(4, ge=2, description="classes of the map (0 = background)")


class SemanticRequest(Request):
    segmentation: SegmentationMap = Field(
        description="a map of class ids (0 = background); the picture is made at its size; (H, W) int64"
    )


class Semantic2ImgTask(ConditionedTask):
    """Semantic-map-to-image generation: a map of class ids, one-hot encoded into concat channels."""

    name = "semantic2img"
    feeds = ("spatial-rescaler",)
    Params = SemanticParams
    params: SemanticParams
    Request = SemanticRequest

    def input_size(self, pipeline: Any, request: BaseModel) -> tuple[int, int]:
        """The map's size: the picture is drawn over it."""
        seg = cast(SemanticRequest, request).segmentation
        return int(seg.shape[-2]), int(seg.shape[-1])

    def raw_input(self, pipeline: Any, request: BaseModel, n: int) -> Any:
        seg = cast(SemanticRequest, request).segmentation
        onehot = F.one_hot(seg, self.params.n_classes).permute(2, 0, 1).float()  # (C, H, W)
        return onehot.unsqueeze(0).repeat(n, 1, 1, 1)  # (n, C, H, W)


class SuperresParams(TaskParams):
    factor: int = Field(4, ge=1, le=16)
    """Upscaling factor of the low-resolution input."""


class ImageRequest(Request):
    image: Picture = Field(description="the low-resolution picture; the picture is made factor times its size")


class SuperresTask(ConditionedTask):
    """Super-resolution: the low-resolution picture conditions by concatenation."""

    name = "superres"
    feeds = ("spatial-rescaler",)
    Params = SuperresParams
    params: SuperresParams
    Request = ImageRequest

    def input_size(self, pipeline: Any, request: BaseModel) -> tuple[int, int]:
        """``factor`` times the low-resolution picture's size."""
        image = cast(ImageRequest, request).image
        return int(image.shape[-2]) * self.params.factor, int(image.shape[-1]) * self.params.factor

    def raw_input(self, pipeline: Any, request: BaseModel, n: int) -> Any:
        image = cast(ImageRequest, request).image
        return image.unsqueeze(0).repeat(n, 1, 1, 1).float()  # (n, 3, h, w)


HOLE_SIGMA = 2.0
"""Gaussian width (px) of the hole painting before the known latents are encoded."""


class InpaintParams(TaskParams):
    mode: Literal["concat", "masked-sampling", "concat+masked"] = Field(
        "concat",
        description="concat: an inpainting model conditioned on the masked image; "
        "masked-sampling: any model, the known region is re-noised and kept at every step; "
        "concat+masked: both (an inpainting model whose known latents are also kept)",
    )
    paste_known: bool = Field(
        True,
        description="put the known pixels of the input back into the result (as CompVis's inpainting script "
        "does): outside the mask the picture is the input exactly, inside it the model's fill",
    )


class InpaintRequest(Request):
    image: Picture = Field(description="the picture to fill in; the result has its size")
    mask: Mask = Field(description="where to fill in (white), the size of the image")

    @model_validator(mode="after")
    def _same_size(self) -> InpaintRequest:
        if tuple(self.mask.shape[-2:]) != tuple(self.image.shape[-2:]):
            raise ValueError(
                f"mask {tuple(self.mask.shape[-2:])} and image {tuple(self.image.shape[-2:])} differ in size"
            )
        return self


class InpaintTask(ConditionedTask):
    """Inpainting: fill the white region of the mask."""

    name = "inpaint"
    feeds = ("masked-image",)
    Params = InpaintParams
    params: InpaintParams
    Request = InpaintRequest

    def input_size(self, pipeline: Any, request: BaseModel) -> tuple[int, int]:
        """The size of the picture to fill in."""
        image = cast(InpaintRequest, request).image
        return int(image.shape[-2]), int(image.shape[-1])

    def _batch(self, pipeline: Any, request: BaseModel, n: int) -> tuple[Any, Any]:
        request = cast(InpaintRequest, request)
        image = request.image.unsqueeze(0).repeat(n, 1, 1, 1).float()  # (n, 3, H, W)
        mask = request.mask.reshape(1, 1, *request.mask.shape[-2:]).repeat(n, 1, 1, 1).float()  # (n, 1, H, W)
        return image, mask

    def raw_input(self, pipeline: Any, request: BaseModel, n: int) -> Any:
        if self.params.mode == "masked-sampling":
            return None
        image, mask = self._batch(pipeline, request, n)
        return {"image": image, "mask": mask}

    def sample_kwargs(self, pipeline: Any, request: BaseModel, n: int) -> dict[str, Any]:
        if self.params.mode == "concat":
            return {}
        image, mask = self._batch(pipeline, request, n)
        # the hole is painted from the known pixels first: encoding what is inside it would leak the content
        # being replaced into the known latents next to the hole (the encoder sees a few pixels around each cell)
        painted = blur_fill(image, (mask > 0.5).to(image.dtype), HOLE_SIGMA)  # (n, 3, H, W)
        x0 = pipeline.encode(painted.to(pipeline.device, pipeline.dtype))  # (n, C, h, w)
        fill = F.interpolate(mask, size=x0.shape[-2:], mode="area") > 0  # (n, 1, h, w): any pixel to fill
        return {"mask": (~fill).to(x0.dtype).to(x0.device), "x0": x0}

    def run(self, pipeline: Any, request: BaseModel, options) -> Any:
        out = super().run(pipeline, request, options)
        if self.params.paste_known:
            image, mask = self._batch(pipeline, request, options.n)
            # a hard edge: blending into the hole would mix in the content being replaced, and blending out of it
            # would change known pixels; the fill already matches its surroundings (they condition it)
            hole = (mask > 0.5).to(out)  # (n, 1, H, W)
            out = out * hole + image.to(out) * (1 - hole)
        return out
