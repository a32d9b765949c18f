"""Built-in samplers plugin."""

from __future__ import annotations

LDMKIT_API_VERSION = "1.0"
