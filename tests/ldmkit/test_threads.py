"""Service embedding: one pipeline shared by several threads gives the single-threaded results, and no leak."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch
from tiny import TINY_SPEC

from ldmkit import Pipeline, SampleOptions
from ldmkit.generation import generate

THREADS = 4
LOAD_SECONDS = 5.0
SEEDS = range(6)
# (sampler, eta, guidance): stochastic samplers draw from the per-call generator, guidance batches cond+uncond
CONFIGS = [("ddim", 0.0, 1.0), ("ddim", 1.0, 3.0), ("euler-a", 0.0, 1.0), ("dpmpp-2m", 0.0, 2.0)]


# each Python thread runs its own ops; one intra-op thread keeps small shared CPUs from thrashing
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    torch.manual_seed(0)
    return Pipeline.from_spec(TINY_SPEC)


def picture(pipe: Pipeline, config: tuple[str, float, float], seed: int) -> torch.Tensor:
    """Direct use of Pipeline.sample and decode, as a service would, without taking the pipeline lock."""
    sampler, eta, guidance = config
    label = torch.tensor([seed % 9])
    latents = pipe.sample(
        label,
        sampler=sampler,
        steps=3,
        eta=eta,
        uncond=pipe.conditioner.unconditional(1) if guidance != 1.0 else None,
        guidance_scale=guidance,
        generator=[torch.Generator().manual_seed(seed)],
    )
    return pipe.decode(latents)  # (1, 3, 16, 16)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_concurrent_sampling_matches_single_threaded_runs(pipe: Pipeline) -> None:
    reference = {(c, s): picture(pipe, c, s) for c in CONFIGS for s in SEEDS}
    options = SampleOptions(n=2, seed=1, steps=3, sampler="ddim", eta=1.0)
    reference_task, _ = generate(pipe, "class2img", {"label": 5}, options)
    errors: list[str] = []
    counts = [0] * THREADS
    stop = threading.Event()
    start = threading.Barrier(THREADS + 1)

    def worker(index: int) -> None:
        start.wait()
        i = index
        while not stop.is_set():
            i += 1
            config, seed = CONFIGS[i % len(CONFIGS)], SEEDS[(i * 7 + index) % len(SEEDS)]
            try:
                if i % 5 == 0:  # the task path, which serializes on pipeline.lock
                    got, _ = generate(pipe, "class2img", {"label": 5}, options)
                    same = torch.equal(got, reference_task)
                else:
                    same = torch.equal(picture(pipe, config, seed), reference[(config, seed)])
                if not same:
                    errors.append(f"thread {index}: {config} seed {seed} differs from the single-threaded result")
            except Exception as exc:  # any error fails the test, with its type
                errors.append(f"thread {index}: {type(exc).__name__}: {exc}")
            counts[index] += 1

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(THREADS)]
    for t in threads:
        t.start()
    start.wait()
    time.sleep(1.0)  # warm-up: allocator arenas of the new threads, first-call caches
    rss_warm = rss_bytes()
    time.sleep(LOAD_SECONDS)
    rss_end = rss_bytes()
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    assert errors == []
    assert all(n >= 2 for n in counts), counts  # every thread really ran
    growth = rss_end - rss_warm
    assert growth < 128 * 1024 * 1024, f"RSS grew by {growth / 2**20:.0f} MiB under steady load"


def test_state_is_not_shared_between_calls(pipe: Pipeline) -> None:
    # the same call twice in a row, and interleaved with another, gives the same picture
    config = ("euler-a", 0.0, 1.0)
    first = picture(pipe, config, 3)
    picture(pipe, ("ddim", 1.0, 3.0), 4)
    assert torch.equal(picture(pipe, config, 3), first)
