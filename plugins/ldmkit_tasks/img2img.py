"""img2img: image-to-image (SDEdit, Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing with Stochastic
Differential Equations") as diffusers' StableDiffusionImg2ImgPipeline runs it.

The picture is encoded, noised to the timestep that ``strength`` picks among the sampler's steps, and denoised
from there with any sampler and any conditioning the pipeline has (a prompt, a label, both, or none).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from pydantic import BaseModel, Field

from ldmkit.errors import SpecError
from ldmkit.inputs import Label, Number, Picture, Prompt
from ldmkit.tasks import LABEL_KINDS, PROMPT_KINDS, ConditionedTask, Request, TaskParams
from ldmkit_tasks.simple import NEGATIVE_LABEL, NEGATIVE_PROMPT

STRENGTH = (
    "how much to change the picture, 0 to 1: the fraction of the sampler's steps taken from it "
    "(None: the task's strength param)"
)


class Img2ImgParams(TaskParams):
    """img2img's settings: the default strength, class names for labels, and default negatives."""

    strength: float = Field(
        0.75, ge=0.0, le=1.0, description="the default strength (0 keeps the picture, 1 redraws it nearly from noise)"
    )
    class_names: list[str] | None = Field(None, description="names of the class ids, so labels can be given by name")
    negative_prompt: str | None = Field(
        None, min_length=1, max_length=1000, description="the default negative_prompt (None: no negative)"
    )
    negative_label: int | str | None = Field(None, description="the default negative_label (None: no negative)")


class Img2ImgRequest(Request):
    image: Picture = Field(description="the picture to start from; the result has its size")
    strength: Number | None = Field(None, ge=0.0, le=1.0, description=STRENGTH)
    prompt: Prompt | None = Field(None, description="what to draw, in words (a pipeline whose conditioner reads text)")
    label: Label | None = Field(None, description="the class to draw (a pipeline whose conditioner reads class ids)")
    negative_prompt: Prompt | None = Field(None, description=NEGATIVE_PROMPT)
    negative_label: Label | None = Field(None, description=NEGATIVE_LABEL)


class Img2ImgTask(ConditionedTask):
    """Image-to-image: redraw a picture, guided by a prompt or label (or nothing), keeping more of it at low strength.

    ``strength`` s of a sampler with ``n`` steps takes its last ``int(n * s)`` steps, starting from the picture's
    latents noised to the first of them (diffusers' ``get_timesteps`` and ``add_noise``). Strength 0 returns
    the picture's autoencoder reconstruction.
    """

    name = "img2img"
    feeds = PROMPT_KINDS + LABEL_KINDS
    Params = Img2ImgParams
    params: Img2ImgParams
    Request = Img2ImgRequest

    def raw_input(self, pipeline: Any, request: BaseModel, n: int) -> Any:
        """``{part: input}`` of the prompt and/or label given (the input itself for a conditioner without parts)."""
        request = cast(Img2ImgRequest, request)
        given: dict[str, Any] = {}
        if request.prompt is not None:
            given["prompt"] = [request.prompt] * n
        if request.label is not None:
            given["label"] = torch.full((n,), int(request.label), dtype=torch.long)  # (n,)
        if not given or pipeline.conditioner is None:
            return next(iter(given.values()), None)  # without a conditioner, the base refuses a given input
        kinds = {"prompt": PROMPT_KINDS, "label": LABEL_KINDS}
        addressed = {self.part_taking(pipeline.conditioner, kinds[name], name): value for name, value in given.items()}
        if None in addressed:  # a conditioner without parts takes one kind of input, whole
            if len(addressed) > 1:
                raise SpecError(f"task {self.name!r}: this pipeline's conditioner takes a prompt or a label, not both")
            return addressed[None]
        return addressed

    def wrap(self, value: Any, conditioner: Any = None) -> Any:
        return value  # raw_input addresses each input to its part itself

    def input_size(self, pipeline: Any, request: BaseModel) -> tuple[int, int]:
        """The size of the picture to start from: the result has its size."""
        image = cast(Img2ImgRequest, request).image
        return int(image.shape[-2]), int(image.shape[-1])

    def sample_kwargs(self, pipeline: Any, request: BaseModel, n: int) -> dict[str, Any]:
        """The picture's latents (``init``, repeated ``n`` times) and the strength, for ``Pipeline.sample``."""
        request = cast(Img2ImgRequest, request)
        image = request.image  # (3, H, W) in [-1, 1]; its size was checked by picture_size
        batch = image.unsqueeze(0).repeat(n, 1, 1, 1).to(pipeline.device, pipeline.dtype)  # (n, 3, H, W)
        init = pipeline.encode(batch)  # (n, C, h, w), scaled
        strength = self.params.strength if request.strength is None else float(request.strength)
        return {"init": init, "strength": strength}
