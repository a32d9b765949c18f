"""FSDP (``distributed.strategy: fsdp``): weights, gradients, optimizer state and EMA sharded over the ranks.

Built on FSDP2 (``torch.distributed.fsdp.fully_shard``). Every block of a trained module's block lists
(a UNet's ``input_blocks`` and ``output_blocks``) becomes its own unit, gathered only around its forward and
backward; the rest of the trained modules forms the root unit around the stage's runner, gathered for the
whole step. Parameters become DTensors split along dim 0, so each rank keeps 1/N of the weights, of the
gradients after their reduce-scatter, of AdamW's moments and of the EMA shadows.

A stage builds its optimizer, scheduler and EMA over the full weights (and a resumed run loads full state
into them) before :func:`shard` runs; :func:`shard` cuts all of that to this rank's shards. Checkpoints and
exports go the other way through :func:`gather`: every rank takes part, rank 0 keeps full CPU tensors, so
the files are those a single process writes and resume under any number of ranks or either strategy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from ldmkit.errors import TrainingError
from ldmkit.training.distributed import Runner, World, _Forward
from ldmkit.training.ema import EMA
from ldmkit.training.optim import load_scheduler_state, scheduler_state

log = logging.getLogger(__name__)


@dataclass
class Sharded:
    """What a stage trains with after :func:`shard`: the runner and the optimizer over the shards."""

    run: Runner
    params: list[nn.Parameter]
    opt: torch.optim.Optimizer
    sched: LambdaLR


def _blocks(module: nn.Module) -> Iterator[nn.Module]:
    """The entries of ``module``'s direct ``ModuleList`` children that hold trainable weights."""
    for child in module.children():
        if isinstance(child, nn.ModuleList):
            for block in child:
                if any(p.requires_grad for p in block.parameters()):
                    yield block


def shard(
    world: World,
    modules: dict[str, nn.Module],
    device: torch.device,
    params: list[nn.Parameter],
    opt: torch.optim.Optimizer,
    sched: LambdaLR,
    ema: EMA | None = None,
) -> Sharded:
    """Shard ``modules`` in place; the optimizer (over ``params``), its scheduler and ``ema`` follow.

    Frozen weights inside the trained modules (a first stage a conditioner holds) stay whole on every rank.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    holder = _Forward(modules)
    names = {id(p): name for name, p in holder.named_parameters()}
    if any(id(p) not in names for g in opt.param_groups for p in g["params"]):
        raise TrainingError("fsdp: the optimizer holds weights outside the trained modules")
    frozen = {p for p in holder.parameters() if not p.requires_grad}
    try:
        mesh = init_device_mesh(device.type, (world.size,))
        for module in modules.values():
            for block in _blocks(module):
                fully_shard(block, mesh=mesh, ignored_params=frozen & set(block.parameters()) or None)
        fully_shard(holder, mesh=mesh, ignored_params=frozen or None)
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise TrainingError(f"fsdp: cannot shard the trained modules ({exc})") from None
    now = dict(holder.named_parameters())  # fully_shard replaced the parameters, under the same names
    new_of = {key: now[name] for key, name in names.items()}
    new_opt, new_sched = _reshard_optimizer(opt, sched, new_of)
    if ema is not None:
        _reshard_ema(ema)
    units = sum(1 for m in modules.values() for _ in _blocks(m)) + 1
    log.info("fsdp: %d units over %d ranks", units, world.size)
    return Sharded(holder, [new_of[id(p)] for p in params], new_opt, new_sched)


def _like(value: Tensor, param: Tensor) -> Tensor:
    """``value`` (a full tensor of ``param``'s shape) cut into this rank's shard of ``param``'s layout."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(param, DTensor) or not isinstance(value, Tensor) or value.shape != param.shape:
        return value
    # every rank holds the same full value (all read the same checkpoint): slice locally, no scatter
    full = value.to(device=param.device, dtype=param.dtype)
    return distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)


def _reshard_optimizer(
    opt: torch.optim.Optimizer, sched: LambdaLR, new_of: dict[int, nn.Parameter]
) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """An optimizer of the same kind and settings over the sharded weights, holding ``opt``'s (loaded) state."""
    state = opt.state_dict()  # parameters by position: the same positions in the new optimizer
    groups = [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [new_of[id(p)] for p in g["params"]]}
        for g in opt.param_groups
    ]
    # the stub wants Optimizer.__init__(params, defaults); a concrete optimizer takes its settings from the groups
    new_opt = type(opt)(groups)  # type: ignore[call-arg]
    new_opt.defaults = dict(opt.defaults)
    new_sched = LambdaLR(new_opt, list(sched.lr_lambdas))
    ordered = [p for g in new_opt.param_groups for p in g["params"]]
    state["state"] = {
        i: {k: v if k == "step" else _like(v, ordered[i]) for k, v in per_param.items()}
        for i, per_param in state["state"].items()
    }
    new_opt.load_state_dict(state)
    load_scheduler_state(new_sched, scheduler_state(sched))
    return new_opt, new_sched


def _reshard_ema(ema: EMA) -> None:
    """The EMA's shadows cut like the (now sharded) weights they follow."""
    with torch.no_grad():
        for key, param in ema._params():
            if key in ema.shadow:
                ema.shadow[key] = _like(ema.shadow[key], param)


def sharded(world: World) -> bool:
    """Whether this run trains with FSDP (several processes and ``strategy: fsdp``)."""
    return world.enabled and world.strategy == "fsdp"


def gather_if_sharded(world: World, state: dict[str, Any]) -> dict[str, Any]:
    """A stage's state as :meth:`Stage.state_dict` returns it: gathered under FSDP, as it is otherwise."""
    return gather(world, state) if sharded(world) else state


def gather(world: World, value: Any) -> Any:
    """``value`` with every sharded tensor made whole, on the CPU, on rank 0 (None elsewhere).

    Every rank must call it with the same structure: each sharded tensor is one collective.
    """
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        full = value.full_tensor()
        return full.cpu() if world.is_main else None
    if isinstance(value, dict):
        return {k: gather(world, v) for k, v in value.items()}
    if isinstance(value, list):
        return [gather(world, v) for v in value]
    if isinstance(value, Tensor) and not world.is_main:
        return None
    return value


@contextmanager
def full_state_dicts(modules: dict[str, nn.Module], states: dict[str, dict[str, Tensor]]) -> Iterator[None]:
    """Within the block ``modules[name].state_dict()`` returns ``states[name]`` (gathered weights), for writers."""
    try:
        for name, module in modules.items():  # an instance attribute shadows the method for the block
            module.state_dict = lambda *args, _s=states[name], **kwargs: dict(_s)  # type: ignore[assignment]
        yield
    finally:
        for module in modules.values():
            module.__dict__.pop("state_dict", None)


@contextmanager
def full_weights(world: World, modules: dict[str, nn.Module], ema: EMA | None) -> Iterator[bool]:
    """Yields whether this rank writes; within the block ``modules`` give their full (EMA) weights.

    Every rank must enter it: under FSDP the weights are gathered first (EMA applied where kept).
    """
    states = None
    if sharded(world):
        with ema.applied() if ema is not None else nullcontext():
            states = gather(world, {name: module.state_dict() for name, module in modules.items()})
    if not world.is_main:
        yield False
    elif states is not None:
        with full_state_dicts(modules, states):
            yield True
    else:
        with ema.applied() if ema is not None else nullcontext():
            yield True
