"""Exponential moving average of trainable weights, as the original ``LitEma`` computes it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class EMA:
    """Shadow copies of the ``requires_grad`` parameters of ``modules`` (a name -> module mapping).

    ``update()`` after each optimizer step: ``shadow -= (1 - d) * (shadow - param)`` with
    ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates when ``warmup`` is on. Before step ``start``
    the shadow copies the weights (and ``n`` stays 0).
    """

    def __init__(self, modules: dict[str, nn.Module], decay: float, start: int = 0, warmup: bool = True) -> None:
        self.modules = modules
        self.decay, self.start, self.warmup = decay, start, warmup
        self.num_updates = 0
        self.shadow: dict[str, Tensor] = {key: p.detach().clone() for key, p in self._params() if p.requires_grad}

    def _params(self) -> Iterator[tuple[str, nn.Parameter]]:
        for prefix, module in self.modules.items():
            for name, param in module.named_parameters():
                yield f"{prefix}.{name}", param

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold the current weights in (``step`` is the optimizer step just taken, from 0)."""
        if step < self.start:
            for key, param in self._params():
                if key in self.shadow:
                    self.shadow[key].copy_(param)
            return
        self.num_updates += 1
        decay = self.decay
        if self.warmup:
            decay = min(decay, (1 + self.num_updates) / (10 + self.num_updates))
        pairs = [(self.shadow[key], param) for key, param in self._params() if key in self.shadow]
        shadows = [s for s, _ in pairs]
        # one fused op per stage over all tensors: shadow -= (1 - decay) * (shadow - param)
        diffs = torch._foreach_sub(shadows, [p.to(s.dtype) for s, p in pairs])
        torch._foreach_mul_(diffs, 1.0 - decay)
        torch._foreach_sub_(shadows, diffs)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the modules hold the EMA weights; the trained weights come back afterwards."""
        with torch.no_grad():
            backup = {key: p.detach().clone() for key, p in self._params() if key in self.shadow}
            for key, param in self._params():
                if key in self.shadow:
                    param.copy_(self.shadow[key])
        try:
            yield
        finally:
            with torch.no_grad():
                for key, param in self._params():
                    if key in backup:
                        param.copy_(backup[key])

    def state_dict(self) -> dict:
        return {"num_updates": self.num_updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise KeyError(f"EMA weights do not match the model: {sorted(missing)[:5]}")
        self.num_updates = int(state["num_updates"])
        for key, value in state["shadow"].items():
            self.shadow[key].copy_(value)
