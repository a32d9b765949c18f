"""AdamW with the linear learning-rate warm-up of the original (``LambdaLinearScheduler``), and shared step helpers."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ldmkit.training.spec import OptimizerSpec

WARMUP_START = 1.0e-6  # the learning-rate factor at step 0 of the warm-up


class LinearWarmup:
    """Factor ``f_start + (1 - f_start) * n / warmup`` for ``n < warmup``, then 1 (a picklable lr lambda)."""

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = warmup_steps

    def __call__(self, n: int) -> float:
        if n >= self.warmup_steps:
            return 1.0
        return WARMUP_START + (1.0 - WARMUP_START) * n / self.warmup_steps


def build_optimizer(
    params: Iterable[nn.Parameter], spec: OptimizerSpec, lr: float | None = None
) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """AdamW over ``params`` and its per-step warm-up scheduler."""
    opt = torch.optim.AdamW(
        list(params),
        lr=lr if lr is not None else spec.lr,
        betas=(spec.betas[0], spec.betas[1]),
        eps=spec.eps,
        weight_decay=spec.weight_decay,
    )
    return opt, LambdaLR(opt, LinearWarmup(spec.warmup_steps))


def scheduler_state(sched: LambdaLR) -> dict:
    """The scheduler's counters (its lambda is rebuilt from the spec, not stored)."""
    return {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"}


def load_scheduler_state(sched: LambdaLR, state: dict) -> None:
    sched.load_state_dict({**state, "lr_lambdas": [None] * len(sched.lr_lambdas)})


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when asked; a no-op otherwise."""
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def step_optimizer(
    loss: torch.Tensor, opt: torch.optim.Optimizer, sched: LambdaLR, params: list[nn.Parameter], clip: float | None
) -> bool:
    """zero_grad, backward, optional global-norm clipping, optimizer and scheduler step.

    Returns False, leaving the weights untouched, when the loss or the gradient norm is NaN or Inf: one
    such update would make every weight non-finite. The scheduler still steps, so the learning rate
    stays a function of the step number (a resumed run agrees with an uninterrupted one).
    """
    opt.zero_grad(set_to_none=True)
    loss.backward()
    # with max_norm=inf the gradients are scaled by exactly 1.0; the norm (global under FSDP) is what we need
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else math.inf)
    finite = bool(torch.isfinite(loss.detach()).all() and torch.isfinite(norm))
    if finite:
        opt.step()
    else:
        opt.zero_grad(set_to_none=True)
    sched.step()
    return finite
