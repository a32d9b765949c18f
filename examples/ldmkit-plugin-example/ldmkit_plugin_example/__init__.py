"""An example ldmkit plugin: registers the ``heun-example`` sampler."""

from __future__ import annotations

from ldmkit import hookimpl

LDMKIT_API_VERSION = "1.0"


@hookimpl
def register_samplers(register) -> None:
    from ldmkit_plugin_example.heun import HeunSampler  # imported only when the registry is built

    register(HeunSampler)


# -- a denoiser that loads from an original-format (CompVis) config and checkpoint ---------------
@hookimpl
def register_denoisers(register) -> None:
    from ldmkit_plugin_example.denoiser import TinyUNet  # imported only when the registry is built

    register(TinyUNet)
