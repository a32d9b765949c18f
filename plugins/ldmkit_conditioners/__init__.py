"""Built-in conditioners: class labels, text (trained from scratch or CLIP), layouts, maps, masked images."""

from __future__ import annotations

from ldmkit import hookimpl

LDMKIT_API_VERSION = "1.0"


@hookimpl
def register_conditioners(register) -> None:
    """Register the built-in conditioners (imports stay inside the hook)."""
    from ldmkit_conditioners.class_embedder import ClassEmbedder
    from ldmkit_conditioners.clip_text import CLIPTextConditioner
    from ldmkit_conditioners.composite import CompositeConditioner
    from ldmkit_conditioners.first_stage_concat import MaskedImageConditioner
    from ldmkit_conditioners.layout import LayoutConditioner
    from ldmkit_conditioners.spatial_rescaler import SpatialRescaler
    from ldmkit_conditioners.transformer_text import TransformerTextConditioner

    for cls in (
        ClassEmbedder,
        TransformerTextConditioner,
        CLIPTextConditioner,
        LayoutConditioner,
        SpatialRescaler,
        MaskedImageConditioner,
        CompositeConditioner,
    ):
        register(cls)
