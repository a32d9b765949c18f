"""Generation across the processes ``torchrun`` starts: each rank makes a contiguous share of the pictures.

Picture ``i`` of a request with seed ``s`` is drawn from its own generator seeded ``s + i``, so a rank
that makes pictures ``a .. b-1`` runs the request with ``n = b - a`` and seed ``s + a``. Rank 0 gathers
the pictures in index order; the result is the single-process batch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from ldmkit.interfaces import SampleOptions

log = logging.getLogger(__name__)


def world_size() -> int:
    """``WORLD_SIZE`` as ``torchrun`` sets it (1 when not launched by it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def rank_device(device: torch.device) -> torch.device:
    """The device this process samples on: a bare ``cuda`` under torchrun means this rank's own GPU.

    ``torchrun`` sets ``LOCAL_RANK``; with several processes on one host, ``cuda`` alone would put
    them all on the first GPU. An explicit ``cuda:N`` is kept as given.
    """
    if device.type != "cuda" or device.index is not None or world_size() <= 1:
        return device
    try:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        local_rank = 0
    count = torch.cuda.device_count()
    if local_rank >= count:
        from ldmkit.errors import InputError

        raise InputError(f"--device cuda: local rank {local_rank} has no GPU of its own ({count} visible)")
    return torch.device("cuda", local_rank)


def share(n: int, rank: int, size: int) -> tuple[int, int]:
    """The pictures ``[start, stop)`` of ``n`` that rank ``rank`` of ``size`` makes (sizes differ by at most 1)."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def generate_sharded(pipeline: Any, task_name: str, inputs: dict[str, Any], options: SampleOptions) -> Tensor | None:
    """All ``options.n`` pictures (N, 3, H, W) on rank 0, None on the other ranks.

    Joins (and afterwards leaves) the gloo process group the environment describes when none exists.
    """
    import torch.distributed as dist

    from ldmkit.generation import generate

    created = False
    if not dist.is_initialized():
        dist.init_process_group("gloo")
        created = True
    try:
        rank, size = dist.get_rank(), dist.get_world_size()
        start, stop = share(options.n, rank, size)
        images: Tensor | None = None
        if stop > start:
            mine = replace(options, n=stop - start, seed=options.seed + start, progress=options.progress and rank == 0)
            images, _ = generate(pipeline, task_name, inputs, mine)
            images = images.cpu()  # (n_rank, 3, H, W)
        log.info("rank %d of %d made pictures %d..%d", rank, size, start, stop - 1)
        parts: list[Any] = [None] * size
        dist.all_gather_object(parts, images)  # an error on any rank surfaces as a failed collective
        if rank != 0:
            return None
        return torch.cat([p for p in parts if p is not None])
    finally:
        if created:
            dist.destroy_process_group()
