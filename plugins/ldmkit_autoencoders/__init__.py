"""Built-in first stages: the KL and VQ autoencoders of latent diffusion, and the pixel-space identity."""

from __future__ import annotations

from ldmkit import hookimpl
from ldmkit.hookspecs import Register

LDMKIT_API_VERSION = "1.0"


@hookimpl
def register_first_stages(register: Register) -> None:
    """Register ``kl-autoencoder``, ``vq-autoencoder`` and ``identity``."""
    from ldmkit_autoencoders.identity import IdentityFirstStage
    from ldmkit_autoencoders.kl import KLAutoencoder
    from ldmkit_autoencoders.vq import VQAutoencoder

    register(KLAutoencoder)
    register(VQAutoencoder)
    register(IdentityFirstStage)
