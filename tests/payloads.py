"""A pickle payload for the tests that check loaders never run what a file holds."""

from __future__ import annotations

import os
from pathlib import Path


class Payload:
    """Unpickling this runs a shell command that creates ``marker``: the marker's absence proves nothing ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
