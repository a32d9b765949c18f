"""CUDA graphs of a tensor function, captured once per input signature and replayed.

A replay launches the whole captured call (hundreds of kernels) with one host call and no host
synchronisation, which is what makes small-batch sampling fast on a GPU.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

Signature = tuple[Any, ...]


def signature(args: tuple[Tensor | None, ...]) -> Signature:
    """Shapes, dtypes and devices of the arguments (None stays None): what a captured graph is valid for."""
    return tuple(None if a is None else (tuple(a.shape), a.dtype, a.device) for a in args)


class _Graph:
    """One captured call: static input buffers, the graph, and its static output."""

    def __init__(self, fn: Callable[..., Tensor], args: tuple[Tensor | None, ...], warmup: int) -> None:
        # clone keeps each argument's layout, so the captured kernels see the layout callers pass
        self.inputs = tuple(None if a is None else a.clone() for a in args)
        device = next(a.device for a in args if a is not None)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        # warm-up on a side stream (lazy initialisation, autotuning, torch.compile) before capturing
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup):
                fn(*self.inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"), torch.no_grad():
            self.output = fn(*self.inputs)

    def run(self, args: tuple[Tensor | None, ...]) -> Tensor:
        for static, value in zip(self.inputs, args, strict=True):
            if static is not None:
                assert value is not None  # one signature: the same arguments are None
                static.copy_(value)
        self.graph.replay()
        # the next replay overwrites the static output; callers (multistep samplers) may keep theirs
        return self.output.clone()


class GraphCache:
    """Replays CUDA graphs of ``fn(*tensors)``, capturing one per (key, input signature).

    At most ``max_graphs`` graphs are kept (least recently used dropped first). A call whose
    capture fails runs ``fn`` directly from then on (one warning). Replays are serialised by a
    lock, so threads that share the cache get correct results.
    """

    def __init__(self, max_graphs: int = 4, warmup: int = 2) -> None:
        self.max_graphs = max_graphs
        self.warmup = warmup
        self._graphs: OrderedDict[Hashable, _Graph] = OrderedDict()
        self._failed: set[Hashable] = set()
        self._lock = threading.Lock()
        self.captures = 0

    def __len__(self) -> int:
        return len(self._graphs)

    @property
    def failures(self) -> int:
        return len(self._failed)

    def clear(self) -> None:
        with self._lock:
            self._graphs.clear()
            self._failed.clear()

    def __call__(self, key: Hashable, fn: Callable[..., Tensor], *args: Tensor | None) -> Tensor:
        full_key = (key, signature(args))
        with self._lock:
            if full_key not in self._failed:
                graph = self._graphs.get(full_key)
                if graph is None:
                    graph = self._capture(full_key, fn, args)
                if graph is not None:
                    self._graphs.move_to_end(full_key)
                    return graph.run(args)
        return fn(*args)

    def _capture(self, key: Hashable, fn: Callable[..., Tensor], args: tuple[Tensor | None, ...]) -> _Graph | None:
        try:
            graph = _Graph(fn, args, self.warmup)
        except Exception as exc:  # a function that cannot be captured still runs, only slower
            log.warning("CUDA graph capture failed (%s: %s); running this call without graphs", type(exc).__name__, exc)
            self._failed.add(key)
            return None
        self.captures += 1
        self._graphs[key] = graph
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        return graph
