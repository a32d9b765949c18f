"""An example ldmkit plugin: registers the ``heun-example`` sampler."""

from __future__ import annotations

from ldmkit import hookimpl

LDMKIT_API_VERSION = "1.0"


@hookimpl
def register_samplers(register) -> None:
    from ldmkit_plugin_example.heun import HeunSampler  # imported only when the registry is built

    register(HeunSampler)
