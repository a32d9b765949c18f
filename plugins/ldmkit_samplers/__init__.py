"""Built-in samplers plugin: ddpm, ddim, plms, dpmpp-2m, euler-a (one algorithm per module, on `ldmkit.sampling`)."""

from __future__ import annotations

from ldmkit import hookimpl

LDMKIT_API_VERSION = "1.0"


@hookimpl
def register_samplers(register) -> None:
    """Register the built-in reverse processes."""
    from ldmkit_samplers.ddim import DDIMSampler
    from ldmkit_samplers.ddpm import DDPMSampler
    from ldmkit_samplers.dpmpp_2m import DPMPP2MSampler
    from ldmkit_samplers.euler_ancestral import EulerAncestralSampler
    from ldmkit_samplers.plms import PLMSSampler

    for cls in (DDPMSampler, DDIMSampler, PLMSSampler, DPMPP2MSampler, EulerAncestralSampler):
        register(cls)
