"""Tasks whose input is a label, a prompt or nothing: uncond, class2img, text2img."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, Field

from ldmkit.inputs import label_input, prompt_input
from ldmkit.tasks import ConditionedTask, Request, TaskParams


class UncondTask(ConditionedTask):
    """Unconditional generation (a conditioned pipeline is given its unconditional input)."""

    name = "uncond"


class ClassParams(TaskParams):
    class_names: list[str] | None = Field(None, description="names of the class ids, so labels can be given by name")


class ClassRequest(Request):
    label: int | str


class Class2ImgTask(ConditionedTask):
    """Class-conditional generation from a class id or name."""

    name = "class2img"
    Params = ClassParams
    Request = ClassRequest
    inputs = ("label",)

    def label_id(self, label: int | str) -> int:
        """The class id of ``label``: an id, or one of ``params.class_names``."""
        return label_input(label, self.params.class_names)

    def raw_input(self, pipeline: Any, request: BaseModel, n: int) -> Any:
        return torch.full((n,), self.label_id(request.label), dtype=torch.long)


class TextRequest(Request):
    prompt: str = Field(min_length=1, max_length=1000)


class Text2ImgTask(ConditionedTask):
    """Text-to-image generation from a prompt."""

    name = "text2img"
    Request = TextRequest
    inputs = ("prompt",)

    def build_request(self, inputs: dict[str, Any]) -> BaseModel:
        return TextRequest(prompt=prompt_input(self.require(inputs, "prompt"), f"task {self.name!r}: prompt"))

    def raw_input(self, pipeline: Any, request: BaseModel, n: int) -> Any:
        return [request.prompt] * n
