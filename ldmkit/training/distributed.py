"""Training over several processes: DDP (default) or FSDP, one process per device, launched by ``torchrun``.

Every rank renders its own slice of the global batch and draws its slice of the step's random numbers
(noise, timesteps, conditioning dropout) from the same per-step generators a single process uses, so
an N-process run computes the single-process step: each rank's loss is the mean over its equal shard
and gradient averaging makes that the mean over the global batch. Rank 0 alone writes logs,
checkpoints and exports; checkpoints hold unwrapped, rank-independent state.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ldmkit.errors import SpecError, TrainingError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    strategy: str = "ddp"
    find_unused_parameters: bool = False
    bucket_cap_mb: float = 25.0

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def part(self, global_batch: int) -> slice:
        """The rows of a global batch of ``global_batch`` that belong to this rank."""
        if global_batch % self.size:
            raise SpecError(f"batch_size {global_batch} does not split evenly over {self.size} processes")
        local = global_batch // self.size
        return slice(self.rank * local, (self.rank + 1) * local)


SINGLE = World()


def env_world_size() -> int:
    """``WORLD_SIZE`` as ``torchrun`` sets it (1 when not launched by it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise TrainingError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None


def setup(
    device: torch.device, strategy: str = "ddp", find_unused: bool = False, bucket_cap_mb: float = 25.0
) -> tuple[World, torch.device, bool]:
    """Join the process group ``torchrun`` describes in the environment.

    Returns (world, this rank's device, whether this call created the group). Backend nccl on CUDA,
    gloo on the CPU; each CUDA rank takes the device ``LOCAL_RANK``.
    """
    import torch.distributed as dist

    size = env_world_size()
    if size <= 1:
        return SINGLE, device, False
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise TrainingError(f"rank {rank}: LOCAL_RANK {local_rank}, but only {torch.cuda.device_count()} GPUs")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    created = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created = True
    world = World(dist.get_rank(), dist.get_world_size(), local_rank, strategy, find_unused, bucket_cap_mb)
    log.info("rank %d of %d on %s (%s)", world.rank, world.size, device, strategy)
    return world, device, created


def teardown(created: bool) -> None:
    """Leave the process group if :func:`setup` created it."""
    import torch.distributed as dist

    if created and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.enabled:
        import torch.distributed as dist

        dist.barrier()


def mean_over_ranks(world: World, values: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each value averaged over the ranks (for logs: the global-batch mean of equal shards)."""
    if not world.enabled or not values:
        return values
    import torch.distributed as dist

    keys = list(values)
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys])  # (K,)
    dist.all_reduce(stacked)
    stacked /= world.size
    return dict(zip(keys, stacked.unbind(0), strict=True))


def gather_cat(world: World, tensor: Tensor) -> Tensor:
    """Equal-shaped per-rank tensors concatenated along dim 0 in rank order (the global batch)."""
    if not world.enabled:
        return tensor
    import torch.distributed as dist

    parts = [torch.empty_like(tensor) for _ in range(world.size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def gather_objects(world: World, value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable, CPU tensors), in rank order."""
    if not world.enabled:
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, value)
    return out


def concat_batches(parts: Sequence[Any]) -> Any:
    """Per-rank pieces of a batch structure (tensors, lists, mappings, None) joined in rank order."""
    first = parts[0]
    if first is None:
        return None
    if isinstance(first, Tensor):
        return torch.cat(list(parts))
    if isinstance(first, dict):
        return {k: concat_batches([p[k] for p in parts]) for k in first}
    if isinstance(first, (list, tuple)):
        return [item for p in parts for item in p]
    raise TrainingError(f"cannot join a batch of {type(first).__name__} values across processes")


class _Forward(nn.Module):
    """Holds the trained modules so one wrapper synchronises them; ``forward(fn, ...)`` runs ``fn``.

    The stages call their models through methods other than ``forward`` (``encode_distribution``,
    a conditioner's ``forward_train``); running that code inside the wrapper's forward is what lets
    DDP/FSDP see the step.
    """

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(modules)

    def forward(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)


Runner = Callable[..., Any]


def direct(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The runner of a single process: just call ``fn``."""
    return fn(*args, **kwargs)


def wrap(world: World, modules: dict[str, nn.Module], device: torch.device) -> Runner:
    """A runner ``runner(fn, *args)`` that calls ``fn`` under DDP over ``modules`` (or directly, alone).

    FSDP also reshapes the optimizer and the EMA: the stages call :func:`ldmkit.training.fsdp.shard` for it.
    """
    if not world.enabled:
        return direct
    if world.strategy == "fsdp":
        raise TrainingError("distributed.wrap: strategy 'fsdp' goes through ldmkit.training.fsdp.shard")
    from torch.nn.parallel import DistributedDataParallel

    holder = _Forward(modules)
    ddp = DistributedDataParallel(
        holder,
        device_ids=[device.index] if device.type == "cuda" else None,
        broadcast_buffers=False,  # buffers do not change in training (BatchNorm's running stats are never used)
        find_unused_parameters=world.find_unused_parameters,
        bucket_cap_mb=world.bucket_cap_mb,
        gradient_as_bucket_view=True,  # gradients live in the buckets: no copy in or out of them
    )
    return ddp


def launch(argv: Sequence[str], nproc: int) -> int:
    """Run ``ldmkit <argv>`` in ``nproc`` local processes through ``torch.distributed.run``; its exit code."""
    if nproc < 1:
        raise SpecError(f"--nproc {nproc}: expected at least 1 process")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "ldmkit.cli",
        *argv,
    ]
    log.info("starting %d processes: %s", nproc, " ".join(cmd[1:]))
    return subprocess.call(cmd)
