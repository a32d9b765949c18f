"""``ldmkit paper run``: the whole experiment, factors in parallel processes, then an exclusive timing phase.

1. The real pictures' scores (the metric's floor) are measured once.
2. One process per factor (:mod:`ldmkit_shapes.paper_worker`) trains its autoencoder and LDM and scores the LDM at
   every checkpoint; they share the device, so their own timings are not comparable.
3. Alone on the device, each factor's training throughput (samples/s, ``ldmkit train`` machinery) and sampling
   throughput (pictures/s at each evaluated step count, decoding included) are measured.

``OUT/results.json`` is rewritten as results arrive (a run cut short keeps what it measured); ``OUT/results.md``
holds the tables. The working files (checkpoints, exported models) stay in a separate work folder.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ldmkit.errors import InputError, SpecError
from ldmkit_shapes.paper_plan import Experiment, load_experiment

log = logging.getLogger("ldmkit_shapes.paper")

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"


def device_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"device": device, "torch": torch.__version__, "python": platform.python_version()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def latent_shape(exp: Experiment, f: int) -> str:
    """``HxWxC`` of the LDM's latents, from its spec."""
    pipeline = exp.ldms[f]["pipeline"]
    size = pipeline.get("latent_size") or ["?", "?"]
    return f"{size[0]}x{size[1]}x{pipeline['denoiser']['params'].get('in_channels', '?')}"


def check_specs(exp: Experiment, work: Path, device: str) -> None:
    """Validate every train spec (with the run's paths) before any process starts."""
    from ldmkit.training import validate_train_spec
    from ldmkit_shapes.paper_worker import train_spec

    for f in exp.plan.factors:
        stages = ["autoencoder", "ldm"] if f > 1 else ["ldm"]
        for stage in stages:
            validate_train_spec(train_spec(exp, stage, f, work, device), source=f"{stage}-f{f}")


def read_rows(work: Path, factors: list[int]) -> list[dict[str, Any]]:
    """Every row the workers have written so far (a half-written last line is skipped)."""
    from ldmkit_shapes.paper_worker import rows_file

    rows = []
    for f in factors:
        path = rows_file(work, f)
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def collect(results: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Sort the worker rows into the results document."""
    results["autoencoders"] = {str(r["f"]): r for r in rows if r["kind"] == "autoencoder"}
    results["checkpoints"] = [r for r in rows if r["kind"] == "checkpoint"]
    results["sweep"] = [r for r in rows if r["kind"] == "sweep"]
    results["stopped"] = {str(r["f"]): r["step"] for r in rows if r["kind"] == "stopped"}
    results["errors"] = {str(r["f"]): r["message"] for r in rows if r["kind"] == "error"}
    results["finished"] = sorted(r["f"] for r in rows if r["kind"] == "done")
    return results


def write_results(out: Path, results: dict[str, Any]) -> None:
    """results.json (atomically: a reader never sees half a file) and results.md."""
    from ldmkit_shapes.paper_report import markdown_report

    tmp = out / f".{RESULTS_JSON}.tmp"
    tmp.write_text(json.dumps(results, indent=1), encoding="utf-8")
    os.replace(tmp, out / RESULTS_JSON)
    (out / RESULTS_MD).write_text(markdown_report(results), encoding="utf-8")


def launch_workers(
    exp: Experiment,
    specs: Path,
    work: Path,
    device: str,
    deadline: float,
    jobs: int,
    out: Path,
    results: dict,
    classifier: str | None = None,
) -> dict[int, int]:
    """Run the factor processes (at most ``jobs`` at once, pixel space first); their exit codes."""
    threads = max(1, (os.cpu_count() or 1) // jobs)  # the parser and the data run on the CPU on any device
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    queue = sorted(exp.plan.factors)  # f = 1 trains longest: start it first
    running: dict[int, subprocess.Popen] = {}
    codes: dict[int, int] = {}
    last_write = 0.0
    while queue or running:
        while queue and len(running) < jobs:
            f = queue.pop(0)
            cmd = [sys.executable, "-m", "ldmkit_shapes.paper_worker", "--specs", str(specs), "--factor", str(f)]
            cmd += ["--work", str(work), "--device", device, "--deadline", str(deadline), "--threads", str(threads)]
            cmd += ["--tiny"] if exp.tiny else []
            cmd += ["--classifier", classifier] if classifier else []
            log.info("starting f=%d", f)
            running[f] = subprocess.Popen(cmd, env=env)  # noqa: S603 (our own module, no shell)
        time.sleep(0.5)
        for f, proc in list(running.items()):
            code = proc.poll()
            if code is not None:
                codes[f] = code
                del running[f]
                log.info("f=%d finished with exit code %d", f, code)
        if time.monotonic() - last_write > 10 or not (queue or running):
            write_results(out, collect(results, read_rows(work, exp.plan.factors)))
            last_write = time.monotonic()
    return codes


def train_throughput(exp: Experiment, f: int, work: Path, device: str) -> float:
    """Training samples per second of the LDM of factor ``f``, alone on the device (after a warm-up)."""
    from ldmkit.training import train
    from ldmkit_shapes.paper_eval import synchronize
    from ldmkit_shapes.paper_worker import train_spec

    tp = exp.plan.throughput
    warm, end = tp.train_warmup, tp.train_warmup + tp.train_steps
    spec = train_spec(exp, "ldm", f, work, device, out_dir=str(work / f"throughput-f{f}"), max_steps=end)
    spec["dataset"] = {**spec["dataset"], "preload": min(int(spec["dataset"].get("preload") or 4096), 4096)}
    if f > 1 and not Path(spec["first_stage_weights"]).is_file():
        spec["first_stage_weights"] = None  # the autoencoder failed: speed does not depend on its weights
    marks: dict[int, float] = {}

    def on_step(done: int, stage: Any) -> None:
        if done in (warm, end):
            synchronize(stage.device)
            marks[done] = time.perf_counter()

    train(spec, resume=False, callbacks=[on_step])
    return tp.train_steps * int(spec["batch_size"]) / (marks[end] - marks[warm])


def measure_throughput(exp: Experiment, work: Path, device: str) -> dict[str, Any]:
    """Exclusive timings of every factor: training samples/s and sampling pictures/s per DDIM step count."""
    from ldmkit.pipeline import Pipeline
    from ldmkit_shapes.paper_eval import sampling_throughput

    ev, out = exp.plan.evaluation, {}
    for f in exp.plan.factors:
        row: dict[str, Any] = {}
        try:
            row["train_samples_per_s"] = train_throughput(exp, f, work, device)
            pipe = Pipeline.load(work / f"throughput-f{f}" / "pipeline", device=device)
            pipe.denoiser.eval()
            for steps in sorted({ev.steps, *ev.steps_sweep}):
                batch = exp.plan.throughput.sample_batch
                row[f"sample_pictures_per_s@{steps}"] = sampling_throughput(
                    pipe, sampler=ev.sampler, steps=steps, batch=batch
                )
            del pipe
        except Exception as exc:  # one factor's failure is recorded; the others are still measured
            log.exception("throughput f=%d failed", f)
            row["error"] = f"{type(exc).__name__}: {exc}"
        out[str(f)] = row
        log.info(
            "throughput f=%d: %s",
            f,
            json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}),
        )
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


def run_experiment(
    specs: str | Path,
    out: str | Path,
    *,
    tiny: bool = False,
    device: str = "cpu",
    jobs: int | None = None,
    work: str | Path | None = None,
    classifier: str | Path | None = None,
) -> dict[str, Any]:
    """Run the experiment of the specs folder; return the results (also written to ``out``).

    ``classifier``: the Shapes classifier weights behind the Fréchet distance (default: the shipped ones).
    """
    import tempfile

    from ldmkit.checkpoints import safetensors_metadata
    from ldmkit_shapes.classifier import weights_path
    from ldmkit_shapes.paper_eval import Judge

    start_wall, t0 = time.time(), time.perf_counter()
    torch.backends.cuda.matmul.allow_tf32 = True  # as in the factor processes: the timings use the same kernels
    torch.backends.cudnn.allow_tf32 = True
    specs, out = Path(specs), Path(out)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device is available")
    exp = load_experiment(specs, tiny=tiny)
    jobs = jobs or len(exp.plan.factors)
    if jobs < 1:
        raise InputError(f"--jobs {jobs}: expected at least 1")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(work) if work is not None else Path(tempfile.mkdtemp(prefix="ldmkit-paper-"))
    work.mkdir(parents=True, exist_ok=True)
    if any(work.glob("f*.jsonl")):
        raise SpecError(f"{work}: holds the results of an earlier run; give an empty work folder")
    check_specs(exp, work, device)
    classifier = str(Path(classifier).resolve()) if classifier is not None else None
    judge = Judge(exp.plan.evaluation, device, classifier)  # a bad classifier file fails here, before any training
    log.info("specs %s (%s), results in %s, work files in %s", specs, "tiny" if tiny else "full", out, work)
    results: dict[str, Any] = {
        "experiment": exp.plan.model_dump(mode="json", exclude={"tiny"}),
        "tiny": tiny,
        "specs": str(specs),
        "environment": device_info(device),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start_wall)),
        "batch_size": {str(f): exp.ldms[f].get("batch_size") for f in exp.plan.factors},
        "latent": {str(f): latent_shape(exp, f) for f in exp.plan.factors},
        # the file name only: results files get published, machine paths do not belong in them
        "classifier": {
            "path": Path(classifier).name if classifier else "shipped",
            **safetensors_metadata(classifier or weights_path()),
        },
    }
    results["real"] = judge.real_floor()
    log.info("real pictures: %s", json.dumps({k: round(v, 4) for k, v in results["real"].items()}))
    del judge
    write_results(out, results)

    deadline = start_wall + exp.plan.deadline_s
    codes = launch_workers(exp, specs, work, device, deadline, jobs, out, results, classifier)
    results["exit_codes"] = {str(f): c for f, c in sorted(codes.items())}
    results["training_phase_s"] = time.perf_counter() - t0
    collect(results, read_rows(work, exp.plan.factors))
    write_results(out, results)

    t1 = time.perf_counter()
    results["throughput"] = measure_throughput(exp, work, device)
    results["throughput_phase_s"] = time.perf_counter() - t1
    results["total_s"] = time.perf_counter() - t0
    write_results(out, results)
    log.info("done in %.0f s; %s", results["total_s"], out / RESULTS_JSON)
    return results


__all__ = ["RESULTS_JSON", "RESULTS_MD", "collect", "measure_throughput", "read_rows", "run_experiment"]
