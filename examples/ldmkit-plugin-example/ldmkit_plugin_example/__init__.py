"""An example ldmkit plugin: the ``heun-example`` sampler, the ``colour-example`` conditioner, the
``colour2img-example`` task and the ``tiny-unet-example`` denoiser (with its own CompVis target)."""

from __future__ import annotations

from ldmkit import hookimpl

LDMKIT_API_VERSION = "1.0"


@hookimpl
def register_samplers(register) -> None:
    from ldmkit_plugin_example.heun import HeunSampler  # imported only when the registry is built

    register(HeunSampler)


@hookimpl
def register_conditioners(register) -> None:
    from ldmkit_plugin_example.colour import ColourConditioner

    register(ColourConditioner)


@hookimpl
def register_tasks(register) -> None:
    from ldmkit_plugin_example.colour_task import Colour2ImgTask

    register(Colour2ImgTask)


# -- a denoiser that loads from an original-format (CompVis) config and checkpoint ---------------
@hookimpl
def register_denoisers(register) -> None:
    from ldmkit_plugin_example.denoiser import TinyUNet  # imported only when the registry is built

    register(TinyUNet)
