"""``colour2img-example``: pictures of a colour given by name or as ``#rrggbb`` (``--input colour=red``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator

from ldmkit.inputs import Text
from ldmkit.tasks import ConditionedTask, Request
from ldmkit_plugin_example.colour import parse_colour


class ColourRequest(Request):
    """One colour: a name the ``colour-example`` conditioner knows, or ``#rrggbb``."""

    colour: Text = Field(max_length=32, description="a colour name (red, green, blue ...) or #rrggbb")

    @field_validator("colour")
    @classmethod
    def _known(cls, colour: str) -> str:
        parse_colour(colour)  # an unknown colour is refused here, before any sampling
        return colour


class Colour2ImgTask(ConditionedTask):
    """Colour-conditional generation: the request's colour for every picture."""

    name = "colour2img-example"
    Request = ColourRequest

    def raw_input(self, pipeline: Any, request: BaseModel, n: int) -> Any:
        """The conditioner's raw input for ``n`` pictures: the colour, ``n`` times."""
        return [request.colour] * n
