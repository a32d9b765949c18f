"""Tasks whose input is a label, a prompt or nothing: uncond, class2img, text2img."""

from __future__ import annotations

from typing import Any, cast

import torch
from pydantic import BaseModel, Field

from ldmkit.inputs import Label, Prompt, label_input
from ldmkit.tasks import LABEL_KINDS, PROMPT_KINDS, ConditionedTask, Request, TaskParams

NEGATIVE_PROMPT = "what to steer away from, in words: replaces the unconditional branch of guidance"
NEGATIVE_LABEL = "the class to steer away from: replaces the unconditional branch of guidance"


class UncondTask(ConditionedTask):
    """Unconditional generation (a conditioned pipeline is given its unconditional input)."""

    name = "uncond"


class ClassParams(TaskParams):
    class_names: list[str] | None = Field(None, description="names of the class ids, so labels can be given by name")
    negative_label: int | str | None = Field(None, description="the default negative_label (None: no negative)")


class ClassRequest(Request):
    label: Label = Field(description="the class to draw: a class id, or one of the task's class_names")
    negative_label: Label | None = Field(None, description=NEGATIVE_LABEL)


class Class2ImgTask(ConditionedTask):
    """Class-conditional generation from a class id or name."""

    name = "class2img"
    feeds = LABEL_KINDS
    Params = ClassParams
    params: ClassParams
    Request = ClassRequest

    def label_id(self, label: int | str) -> int:
        """The class id of ``label``: an id, or one of ``params.class_names``."""
        return label_input(label, self.params.class_names)

    def raw_input(self, pipeline: Any, request: BaseModel, n: int) -> Any:
        return torch.full((n,), self.label_id(cast(ClassRequest, request).label), dtype=torch.long)


class TextParams(TaskParams):
    """text2img's settings: the common ones and a default negative prompt for guided sampling."""

    negative_prompt: str | None = Field(
        None, min_length=1, max_length=1000, description="the default negative_prompt (None: no negative)"
    )


class TextRequest(Request):
    prompt: Prompt = Field(description="what to draw, in words (1 to 1000 characters)")
    negative_prompt: Prompt | None = Field(None, description=NEGATIVE_PROMPT)


class Text2ImgTask(ConditionedTask):
    """Text-to-image generation from a prompt."""

    name = "text2img"
    feeds = PROMPT_KINDS
    Params = TextParams
    params: TextParams
    Request = TextRequest

    def raw_input(self, pipeline: Any, request: BaseModel, n: int) -> Any:
        return [cast(TextRequest, request).prompt] * n
