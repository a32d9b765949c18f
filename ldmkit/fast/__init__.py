"""A fast inference path: reduced precision, channels_last, torch.compile, CUDA graphs, tiled decoding.

``pipeline.optimize()`` (or :func:`optimize`) switches it on. On CUDA the defaults are bf16 weights
and activations (GroupNorm, the schedule arithmetic and the sampler state stay float32),
channels_last, ``torch.compile`` of the denoiser and the decoder with static shapes, and a CUDA
graph per denoiser call shape; on the CPU every setting defaults to off.
"""

from __future__ import annotations

from ldmkit.fast.config import FastConfig, fast_config
from ldmkit.fast.graphs import GraphCache
from ldmkit.fast.modules import FastDecoder, FastDenoiser
from ldmkit.fast.path import FastPath, optimize
from ldmkit.fast.tiling import tile_starts, tiled_decode

__all__ = [
    "FastConfig",
    "FastDecoder",
    "FastDenoiser",
    "FastPath",
    "GraphCache",
    "fast_config",
    "optimize",
    "tile_starts",
    "tiled_decode",
]
