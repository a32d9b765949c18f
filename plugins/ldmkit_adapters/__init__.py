"""Built-in adapters: LoRA (denoiser and text encoder) and textual-inversion embeddings."""

from __future__ import annotations

from ldmkit import hookimpl

LDMKIT_API_VERSION = "1.0"


@hookimpl
def register_adapters(register) -> None:
    """Register the built-in adapters (imports stay inside the hook)."""
    from ldmkit_adapters.lora import LoraAdapter
    from ldmkit_adapters.textual_inversion import TextualInversion

    register(LoraAdapter)
    register(TextualInversion)
