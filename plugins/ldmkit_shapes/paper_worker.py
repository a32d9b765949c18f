"""One factor of the paper experiment, in its own process: train the autoencoder (f > 1), then the LDM, scoring it
at every checkpoint. ``ldmkit paper run`` starts one such process per factor::

    python -m ldmkit_shapes.paper_worker --specs examples/paper --factor 4 --work WORK --device cuda --deadline T

Each result is appended to ``WORK/f{f}.jsonl`` as soon as it exists (one JSON object a line), so an interrupted
run still leaves what it measured. Training goes through :func:`ldmkit.training.train`, the machinery of
``ldmkit train``; the scoring runs in a step callback with the EMA weights applied.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from ldmkit.errors import LdmkitError
from ldmkit_shapes.paper_eval import Judge, evaluate_autoencoder, evaluate_pipeline, synchronize
from ldmkit_shapes.paper_plan import Experiment, load_experiment

log = logging.getLogger("ldmkit_shapes.paper")


class DeadlineReached(Exception):
    """Raised from the step callback to stop an LDM whose time is up."""

    def __init__(self, step: int) -> None:
        super().__init__(f"deadline reached after step {step}")
        self.step = step


def rows_file(work: Path, f: int) -> Path:
    return work / f"f{f}.jsonl"


def append_row(work: Path, f: int, row: dict[str, Any]) -> None:
    """One result line, flushed at once."""
    with rows_file(work, f).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"f": f, **row}) + "\n")


def train_spec(exp: Experiment, stage: str, f: int, work: Path, device: str, **updates: Any) -> dict[str, Any]:
    """The train-spec mapping of ``stage`` (autoencoder or ldm) for factor ``f``, writing under ``work``."""
    source = exp.autoencoders[f] if stage == "autoencoder" else exp.ldms[f]
    spec = json.loads(json.dumps(source))  # a deep copy of plain data
    spec.update(out_dir=str(work / f"{'ae' if stage == 'autoencoder' else 'ldm'}-f{f}"), device=device, progress=False)
    if stage == "ldm" and f > 1:
        spec["first_stage_weights"] = str(work / f"ae-f{f}" / "first_stage.safetensors")
    spec.update(updates)
    return spec


def train_autoencoder(exp: Experiment, f: int, work: Path, device: str, judge: Judge) -> None:
    """Train the first stage of factor ``f`` and record its reconstruction scores."""
    from ldmkit.checkpoints import load_into
    from ldmkit.pipeline import Pipeline
    from ldmkit.training import train

    t0 = time.perf_counter()
    spec = train_spec(exp, "autoencoder", f, work, device)
    every = max(1, int(spec["max_steps"]) // 5)

    def heartbeat(done: int, stage: Any) -> None:
        if done % every == 0:
            log.info("f=%d autoencoder: step %d of %d, %.0f s", f, done, spec["max_steps"], time.perf_counter() - t0)

    result = train(spec, resume=False, callbacks=[heartbeat])
    seconds = time.perf_counter() - t0
    pipe = Pipeline.from_spec(exp.ldms[f]["pipeline"])
    load_into(pipe.first_stage, result.export, what="first stage")
    first_stage = pipe.first_stage.to(device).eval()
    row = {"kind": "autoencoder", "steps": result.steps, "train_s": seconds, "last_loss": result.last_loss}
    row.update(evaluate_autoencoder(first_stage, judge, torch.device(device)))
    append_row(work, f, row)
    log.info("autoencoder f=%d: %s", f, json.dumps({k: _round(v) for k, v in row.items()}))


def train_ldm(exp: Experiment, f: int, work: Path, device: str, judge: Judge, deadline: float) -> None:
    """Train the LDM of factor ``f``, scoring it (EMA weights) at each checkpoint; stop at ``deadline``."""
    from ldmkit.training import train

    checkpoints = set(exp.plan.checkpoints)
    final = exp.max_steps
    clock = {"start": time.perf_counter(), "eval": 0.0}

    every = max(1, final // 10)

    def on_step(done: int, stage: Any) -> None:
        if done % every == 0:  # a heartbeat in the log
            log.info("f=%d: step %d of %d, %.0f s", f, done, final, time.perf_counter() - clock["start"])
        if done in checkpoints:
            synchronize(stage.device)
            t0 = time.perf_counter()
            modules = [m for m in (stage.pipe.denoiser, stage.pipe.conditioner) if m is not None]
            with stage.ema.applied() if stage.ema is not None else contextlib.nullcontext():
                for m in modules:
                    m.eval()
                try:
                    row = evaluate_pipeline(stage.pipe, judge)
                    sweep = exp.plan.evaluation.steps_sweep if done == final else []
                    extra = [evaluate_pipeline(stage.pipe, judge, steps=s) for s in sweep]
                finally:
                    for m in modules:
                        m.train()
            train_s = t0 - clock["start"] - clock["eval"]
            clock["eval"] += time.perf_counter() - t0
            base = {"kind": "checkpoint", "step": done, "train_s_shared": train_s, "scale_factor": stage.scale_factor}
            append_row(work, f, {**base, "sampling_steps": exp.plan.evaluation.steps, **row})
            log.info("f=%d step %d: %s", f, done, json.dumps({k: _round(v) for k, v in row.items()}))
            for s, r in zip(exp.plan.evaluation.steps_sweep if done == final else [], extra, strict=True):
                append_row(work, f, {**base, "kind": "sweep", "sampling_steps": s, **r})
                log.info(
                    "f=%d step %d, %d sampling steps: %s", f, done, s, json.dumps({k: _round(v) for k, v in r.items()})
                )
        if done < final and time.time() > deadline:
            raise DeadlineReached(done)

    try:
        train(train_spec(exp, "ldm", f, work, device), resume=False, callbacks=[on_step])
    except DeadlineReached as stop:
        append_row(work, f, {"kind": "stopped", "step": stop.step, "reason": "deadline"})
        log.warning("f=%d: stopped by the deadline after step %d of %d", f, stop.step, final)


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def run_factor(
    specs: Path, f: int, work: Path, device: str, deadline: float, tiny: bool, classifier: str | None = None
) -> None:
    """The whole job of one factor (see the module docstring)."""
    exp = load_experiment(specs, tiny=tiny)
    if f not in exp.plan.factors:
        raise LdmkitError(f"factor {f} is not one of the experiment's {exp.plan.factors}")
    judge = Judge(exp.plan.evaluation, device, classifier)
    if f > 1:
        train_autoencoder(exp, f, work, device, judge)
    train_ldm(exp, f, work, device, judge, deadline)
    append_row(work, f, {"kind": "done"})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ldmkit_shapes.paper_worker", description=__doc__)
    p.add_argument("--specs", type=Path, required=True)
    p.add_argument("--factor", type=int, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--deadline", type=float, required=True, help="time.time() after which LDM training stops")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--classifier", default=None, help="Shapes classifier weights (default: the shipped ones)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"[f={args.factor}] %(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    try:
        run_factor(args.specs, args.factor, args.work, args.device, args.deadline, args.tiny, args.classifier)
    except Exception as exc:  # recorded for the results, then the process fails
        append_row(args.work, args.factor, {"kind": "error", "message": f"{type(exc).__name__}: {exc}"})
        log.exception("f=%d failed", args.factor)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["DeadlineReached", "append_row", "main", "rows_file", "run_factor", "train_spec"]
