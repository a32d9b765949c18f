"""Tasks whose input is a label, a prompt or nothing: uncond, class2img, text2img."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, Field

from ldmkit.errors import InputError
from ldmkit_tasks.base import ConditionedTask, Request, TaskParams


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
        names = self.params.class_names
        if isinstance(label, str) and not label.strip().lstrip("-").isdigit():
            if not names or label.strip().lower() not in names:
                known = ", ".join(names or [])
                raise InputError(f"unknown label {label!r}; known labels: {known or '(class ids only)'}")
            return names.index(label.strip().lower())
        value = int(label)
        if value < 0 or (names is not None and value >= len(names)):
            raise InputError(f"label {value} is out of range")
        return value

    def raw_input(self, pipeline: Any, request: BaseModel, n: int) -> Any:
        return torch.full((n,), self.label_id(request.label), dtype=torch.long)


class TextRequest(Request):
    prompt: str = Field(min_length=1, max_length=1000)


class Text2ImgTask(ConditionedTask):
    """Text-to-image generation from a prompt."""

    name = "text2img"
    Request = TextRequest
    inputs = ("prompt",)

    def raw_input(self, pipeline: Any, request: BaseModel, n: int) -> Any:
        return [request.prompt] * n
