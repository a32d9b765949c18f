"""Helpers shared by the sampling benchmarks: import paths, timers, FLOP counts, matmul peak, tables."""

from __future__ import annotations

import contextlib
import importlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def ensure_importable() -> None:
    """Make ldmkit and its built-in plugins importable from a plain checkout (no install needed)."""
    for path in (ROOT, ROOT / "plugins"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


# ldmkit's own plugins, as pyproject.toml's [project.entry-points.ldmkit] lists them
BUILTIN_PLUGINS = ("autoencoders", "unet", "conditioners", "samplers", "tasks", "shapes", "adapters")


def ensure_builtin_plugins() -> None:
    """Register ldmkit's built-in plugins by module when none are installed (a plain checkout has no entry points).

    Needed to load a pipeline folder (its spec names components) or look a sampler up by name.
    """
    from ldmkit.registry import PluginInfo, Registry, get_registry, make_plugin_manager, reset_registry

    if "unet" in get_registry().names("denoiser"):
        return
    registry = Registry(manager=make_plugin_manager())
    for name in BUILTIN_PLUGINS:
        module = importlib.import_module(f"ldmkit_{name}")
        if not registry.add_plugin(module, PluginInfo(name, "ldmkit", "checkout")):
            raise RuntimeError(f"built-in plugin {name!r} failed to register: {registry.failures[-1]}")
    reset_registry(registry)


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """float32 matmuls and convolutions in full float32 for the block (the reference)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def times_ms(fn: Callable[[], object], device: torch.device, *, warmup: int = 3, repeats: int = 10) -> list[float]:
    """Milliseconds of each of ``repeats`` calls of ``fn()`` after ``warmup`` calls (CUDA events on a GPU,
    perf_counter elsewhere)."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        sync(device)
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
    return times


def time_ms(fn: Callable[[], object], device: torch.device, *, warmup: int = 3, repeats: int = 10) -> float:
    """Median milliseconds of ``fn()`` after ``warmup`` calls."""
    return statistics.median(times_ms(fn, device, warmup=warmup, repeats=repeats))


def interleaved_ms(
    fns: dict[str, Callable[[], object]], device: torch.device, *, rounds: int = 3, warmup: int = 2, repeats: int = 10
) -> dict[str, list[list[float]]]:
    """Per-call milliseconds of each function, timed in ``rounds`` rounds that take every function in turn.

    Interleaving spreads slow drifts of the machine (clocks, temperature, other tenants) over all
    contenders instead of charging them to whichever was timed last. Result: name -> one list per round.
    """
    samples: dict[str, list[list[float]]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(times_ms(fn, device, warmup=warmup, repeats=repeats))
    return samples


def summary_ms(rounds: list[list[float]]) -> tuple[float, float, float]:
    """(median of every call, lowest and highest median of a round) of ``interleaved_ms`` samples."""
    medians = [statistics.median(r) for r in rounds]
    return statistics.median([ms for r in rounds for ms in r]), min(medians), max(medians)


def graphed_us(fn: Callable[[], object], calls: int, repeats: int = 5) -> float:
    """Microseconds per call of ``fn``, from replays of a CUDA graph of ``calls`` calls (median)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return sorted(times)[len(times) // 2]


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (matmuls, convolutions, attention) by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """Measured TFLOP/s of an n x n x n matrix product in ``dtype`` (the practical ceiling)."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    ms = time_ms(lambda: a @ b, device, warmup=3, repeats=repeats)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def randomize_zeroed(module: torch.nn.Module) -> None:
    """Re-initialise the layers the constructors zero, so a random-weight model computes something."""
    for m in module.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv1d, torch.nn.Linear)) and not m.weight.any():
            m.reset_parameters()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float32."""
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
