"""Built-in unet plugin: the latent diffusion UNet denoiser (registered as "unet")."""

from __future__ import annotations

from ldmkit import hookimpl

LDMKIT_API_VERSION = "1.0"


@hookimpl
def register_denoisers(register) -> None:
    """Register the UNet denoiser."""
    from ldmkit_unet.unet import UNet

    register(UNet)
