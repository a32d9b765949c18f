"""The training loop: data, steps, logs, checkpoints, resume and export, for either stage."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ldmkit.errors import TrainingError
from ldmkit.training import distributed, fsdp
from ldmkit.training.checkpoint import FORMAT, FORMAT_VERSION, LAST, check_writable, load_state, save_state
from ldmkit.training.data import Preloaded, batches, build_dataset
from ldmkit.training.interrupt import InterruptFlag, TrainingInterrupted, exclusive_out_dir
from ldmkit.training.logging_ import make_logger
from ldmkit.training.seeding import derive_seed, rng_state, seed_all, set_rng_state
from ldmkit.training.spec import TrainSpec, load_train_spec, validate_train_spec
from ldmkit.training.stage import Stage

log = logging.getLogger(__name__)

StepCallback = Callable[[int, Stage], None]
"""``callback(completed_steps, stage)`` after every step (and after that step's checkpoint)."""


@dataclass(frozen=True)
class TrainResult:
    """What a finished run left behind."""

    out_dir: Path
    steps: int
    checkpoint: Path
    export: Path
    resumed_from: int
    last_loss: float | None


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device: 'cuda' was asked for, but no CUDA device is available")
    return torch.device(name)


def make_stage(spec: TrainSpec, device: torch.device, registry=None) -> Stage:
    """The stage object of ``spec.stage``."""
    if spec.stage == "autoencoder":
        from ldmkit.training.autoencoder import AutoencoderStage

        return AutoencoderStage(spec, device, registry)
    if spec.stage == "lora":
        from ldmkit.training.lora import LoraStage

        return LoraStage(spec, device, registry)
    from ldmkit.training.ldm import LDMStage

    return LDMStage(spec, device, registry)


def _find_checkpoint(out_dir: Path, resume: bool | str | Path) -> Path | None:
    if resume is False:
        return None
    if resume is True:
        path = out_dir / LAST
        return path if path.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise TrainingError(f"resume: {path}: no such checkpoint")
    return path


def train(
    spec: TrainSpec | dict | str | Path,
    *,
    resume: bool | str | Path = True,
    progress: bool | None = None,
    callbacks: Sequence[StepCallback] = (),
    registry=None,
) -> TrainResult:
    """Run (or continue) a training run and export its result.

    ``resume=True`` continues from ``out_dir/last.ckpt`` when it exists; a path resumes from that file;
    ``False`` starts afresh. A resumed run ends with exactly the weights an uninterrupted run would have.

    Launched by ``torchrun`` (``WORLD_SIZE`` > 1), each process trains its shard of every global batch
    (``batch_size`` is the global batch) and rank 0 writes logs, checkpoints and the export.
    """
    if isinstance(spec, (str, Path)):
        spec = load_train_spec(spec)
    spec = validate_train_spec(spec)
    dist_spec = spec.distributed
    world, device, created = distributed.setup(
        resolve_device(spec.device), dist_spec.strategy, dist_spec.find_unused_parameters, dist_spec.bucket_cap_mb
    )
    try:
        return _train(spec, world, device, resume, progress, callbacks, registry)
    finally:
        distributed.teardown(created)


def _train(spec: TrainSpec, world, device, resume, progress, callbacks, registry) -> TrainResult:
    world.part(spec.batch_size)  # a batch that does not split evenly fails before any work
    out_dir = Path(spec.out_dir)
    check_writable(out_dir)
    if not world.is_main:
        return _train_in(spec, world, device, resume, progress, callbacks, registry, out_dir)
    with exclusive_out_dir(out_dir):  # rank 0 writes: one run per folder
        return _train_in(spec, world, device, resume, progress, callbacks, registry, out_dir)


def _train_in(spec: TrainSpec, world, device, resume, progress, callbacks, registry, out_dir: Path) -> TrainResult:
    if world.is_main:
        for stale in out_dir.glob(f".{LAST}.*.tmp"):  # left by a run killed while saving
            stale.unlink(missing_ok=True)
    if spec.precision == "bf16" and device.type != "cuda":
        log.warning("precision bf16 applies on CUDA only; training in fp32 on %s", device)
    dataset: Any = build_dataset(spec.dataset, registry)  # bad dataset params fail before any model is built
    ckpt_path = _find_checkpoint(out_dir, resume)
    state = load_state(ckpt_path) if ckpt_path is not None else None
    start = int(state["step"]) if state is not None else 0

    seed_all(derive_seed(spec.seed, "init"))  # a fresh run's initial weights follow from the seed
    stage = make_stage(spec, device, registry)
    if state is not None:
        _check_same_model(state, spec, stage, ckpt_path)
        try:
            stage.load_state_dict(state["stage"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise TrainingError(f"resume: {ckpt_path} does not fit this spec's models ({exc})") from None
        set_rng_state(state["rng"])
        log.info("resuming from %s at step %d", ckpt_path, start)
    stage.distribute(world)  # after loading: the wrappers start from the same weights on every rank
    logger = make_logger(spec.log, out_dir, stage.terms, start) if world.is_main else _NoLogger()
    last = out_dir / LAST
    last_loss: float | None = None
    try:
        data = dataset
        if spec.dataset.preload is not None:
            where = device if spec.dataset.preload_device == "auto" else torch.device("cpu")
            data = Preloaded(dataset, spec.dataset.preload, spec.num_workers, where)
        stream = batches(
            data, spec.batch_size, spec.seed, start, spec.max_steps, spec.num_workers, world.rank, world.size
        )
        show = (spec.progress if progress is None else progress) and world.is_main
        last_loss = _run_steps(spec, stage, stream, start, logger, show, callbacks, last, world)
        if state is None or start < spec.max_steps:
            _save(spec, stage, spec.max_steps, last, world)  # every rank: sharded state is gathered
        export = stage.export(out_dir)  # every rank takes part; rank 0 writes
        distributed.barrier(world)  # no rank returns before the result is on disk
    finally:
        logger.close()
    log.info("finished %d steps; result in %s", spec.max_steps, export)
    return TrainResult(out_dir, spec.max_steps, last, export, start, last_loss)


class _NoLogger:
    """The logger of ranks other than 0."""

    def write(self, step: int, values: dict[str, Any]) -> None:
        return None

    def close(self) -> None:
        return None


def _run_steps(
    spec, stage: Stage, stream, start: int, logger, show: bool, callbacks, last: Path, world=distributed.SINGLE
) -> float | None:
    from tqdm.auto import tqdm

    last_loss = None
    skipped = 0  # steps in a row whose update was skipped for a non-finite loss or gradient
    tick, ticked = time.perf_counter(), start
    # several processes cannot agree on where to stop without a collective per step: there Ctrl-C stops at once
    interrupt = InterruptFlag()
    deferral = contextlib.nullcontext(interrupt) if world.enabled else interrupt.deferred()
    with (
        deferral,
        tqdm(total=spec.max_steps, initial=start, disable=not show, unit="step", dynamic_ncols=True) as bar,
    ):
        for step, batch in zip(range(start, spec.max_steps), stream, strict=False):
            # dropout inside the models; each rank draws its own masks (equal in distribution, not in bits)
            rank_key = (world.rank,) if world.enabled else ()
            seed_all(derive_seed(spec.seed, "global", step, *rank_key))
            if step == 0:
                stage.on_start(batch)
            lr = stage.lr()
            terms = stage.train_step(batch, step)
            done = step + 1
            skipped = _count_nonfinite(stage, done, skipped, spec.nonfinite_skips, last)
            if done % spec.log_every == 0 or done == spec.max_steps:
                terms = distributed.mean_over_ranks(world, terms)  # every rank takes part
                values = {k: float(v) for k, v in terms.items()}
                now = time.perf_counter()
                rate = (done - ticked) * spec.batch_size / max(now - tick, 1e-9)
                tick, ticked = now, done
                last_loss = values["loss"]
                logger.write(done, {"loss": last_loss, "lr": lr, "images_per_s": rate, **values})
                bar.set_postfix(loss=f"{last_loss:.4g}", img_s=f"{rate:.1f}")
            bar.update(1)
            if done % spec.checkpoint_every == 0 and done < spec.max_steps:
                _save(spec, stage, done, last, world)
            for callback in callbacks:
                callback(done, stage)
            if interrupt.requested and done < spec.max_steps:
                _save(spec, stage, done, last, world)
                log.warning("interrupted: %s holds step %d; run the same command again to resume", last, done)
                raise TrainingInterrupted(done, last)
    return last_loss


def _count_nonfinite(stage: Stage, done: int, skipped: int, allowed: int, last: Path) -> int:
    """The new count of skipped steps in a row; TrainingError once more than ``allowed`` were skipped."""
    if not stage.nonfinite_step:
        return 0
    skipped += 1
    if skipped > allowed:
        raise TrainingError(
            f"step {done}: the loss or a gradient is NaN or Inf ({skipped} step(s) in a row, nonfinite_skips is "
            f"{allowed}); the weights were not updated and {last} keeps the last saved step. Lower optimizer.lr, "
            "set grad_clip, or raise nonfinite_skips"
        )
    log.warning("step %d: non-finite loss or gradient; update skipped (%d in a row)", done, skipped)
    return skipped


def _first_nonfinite(state: Any, where: str = "") -> str | None:
    """The dotted name of the first floating tensor in ``state`` holding NaN or Inf, else None."""
    if isinstance(state, torch.Tensor):
        return where if state.is_floating_point() and not bool(torch.isfinite(state).all()) else None
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    for key, value in items:
        found = _first_nonfinite(value, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def _save(spec: TrainSpec, stage: Stage, step: int, path: Path, world=distributed.SINGLE) -> None:
    """Called on every rank (gathering sharded state is collective); rank 0 writes."""
    if not world.is_main and not fsdp.sharded(world):
        return  # nothing to gather and nothing to write
    state = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "stage_kind": spec.stage,
        "step": step,
        "model_spec": stage.model_spec(),
        "stage": stage.state_dict(),
        "rng": rng_state(),
    }
    if not world.is_main:
        return
    bad = _first_nonfinite(state["stage"])
    if bad is not None:  # a finite checkpoint is never replaced by one that can only produce NaN
        raise TrainingError(f"step {step}: {bad} holds NaN or Inf; not saved, {path} keeps the last saved step")
    save_state(state, path)
    log.debug("saved %s at step %d", path, step)


def _check_same_model(state: dict[str, Any], spec: TrainSpec, stage: Stage, path: Path | None) -> None:
    if state.get("stage_kind") != spec.stage:
        raise TrainingError(f"resume: {path} is a {state.get('stage_kind')!r} run, the spec a {spec.stage!r} run")
    if state.get("model_spec") != stage.model_spec():
        raise TrainingError(f"resume: {path} was trained with other model settings than this spec; use another out_dir")
