"""``colour2img-example``: pictures of a colour given by name or as ``#rrggbb`` (``--colour``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, field_validator

from ldmkit.inputs import prompt_input
from ldmkit.tasks import ConditionedTask, Request
from ldmkit_plugin_example.colour import parse_colour


class ColourRequest(Request):
    """One colour: a name the ``colour-example`` conditioner knows, or ``#rrggbb``."""

    colour: str

    @field_validator("colour")
    @classmethod
    def _known(cls, colour: str) -> str:
        parse_colour(colour)  # an unknown colour is refused here, before any sampling
        return colour


class Colour2ImgTask(ConditionedTask):
    """Colour-conditional generation: the request's colour for every picture."""

    name = "colour2img-example"
    Request = ColourRequest
    inputs = ("colour",)

    def build_request(self, inputs: dict[str, Any]) -> BaseModel:
        """The colour from the CLI (a string) or Python (a string or UTF-8 bytes)."""
        colour = prompt_input(self.require(inputs, "colour"), what="colour", max_length=32)
        return super().build_request({"colour": colour})

    def raw_input(self, pipeline: Any, request: BaseModel, n: int) -> Any:
        """The conditioner's raw input for ``n`` pictures: the colour, ``n`` times."""
        return [request.colour] * n
