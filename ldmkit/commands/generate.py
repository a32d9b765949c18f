"""``ldmkit generate``: pictures for a task, each PNG carrying what replays it."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ldmkit.errors import InputError
from ldmkit.interfaces import SampleOptions

if TYPE_CHECKING:  # torch, numpy and the pipeline load only when the command runs
    import numpy as np
    import torch

    from ldmkit.pipeline import Pipeline

log = logging.getLogger(__name__)

FILE_INPUTS = ("layout", "segmentation", "image", "mask")
TEXT_INPUTS = ("label", "prompt")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="generate pictures for a task",
        description="Generate N pictures for a task with a pipeline (default: the default model a plugin "
        "provides, the shipped Shapes model; `ldmkit plugins` lists the models).",
        epilog="""examples:
  ldmkit generate --task class2img --label "red circle" -n 4 --out out/
  ldmkit generate --task text2img --prompt "a red circle and a blue square" --out out/
  ldmkit generate --model shapes --task uncond -n 8 --out out/
  ldmkit generate --task layout2img --layout boxes.json --out out/
  ldmkit generate --task inpaint --image pic.png --mask mask.png --out out/
  ldmkit generate --task text2img --prompt "a blue triangle" --device cuda --fast --out out/
  ldmkit generate --replay out/000000.png --out replay/""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--spec", help="pipeline folder (spec.yaml + weights) or spec file; default: the default model")
    p.add_argument("--model", help="a model a plugin provides, by name (`ldmkit plugins` lists them)")
    p.add_argument("--task", help="uncond, class2img, text2img, layout2img, semantic2img, superres, inpaint")
    p.add_argument("--label", help="class id or name (class2img)")
    p.add_argument("--prompt", help="caption (text2img)")
    p.add_argument("--layout", help="JSON file: [{label, box: [x0, y0, x1, y1]}] (layout2img)")
    p.add_argument("--segmentation", help="8-bit PNG map of class ids (semantic2img)")
    p.add_argument("--image", help="PNG input picture (superres, inpaint)")
    p.add_argument("--mask", help="PNG mask, white = fill in (inpaint)")
    p.add_argument("-n", type=int, default=None, help="number of pictures (default 4)")
    p.add_argument("--seed", type=int, default=None, help="seed of the first picture (default 0)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the task's, else the spec's)")
    p.add_argument(
        "--sampler", default=None, help="ddim, plms, ddpm, dpmpp-2m, euler-a (default: the task's, else the spec's)"
    )
    p.add_argument("--eta", type=float, default=None, help="DDIM eta (default: the spec's)")
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: the task's, else the spec's)",
    )
    p.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:N or auto (cuda if available, else cpu); default: cpu, or the recorded one with --replay",
    )
    p.add_argument(
        "--fast",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the fast inference path (on CUDA: bf16, torch.compile, CUDA graphs; the first call compiles); "
        "default: off, or the recorded setting with --replay",
    )
    p.add_argument(
        "--precision",
        choices=("bf16", "fp16", "fp32"),
        default=None,
        help="the fast path's precision (needs --fast); default: bf16 on CUDA, fp32 on the CPU, "
        "or the recorded one with --replay",
    )
    p.add_argument("--replay", metavar="IMAGE.png", help="regenerate a picture from its metadata")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=run)


def _read_inputs(args) -> dict:
    inputs: dict = {k: getattr(args, k) for k in TEXT_INPUTS if getattr(args, k) is not None}
    for key in FILE_INPUTS:
        value = getattr(args, key)
        if value is None:
            continue
        path = Path(value)
        if not path.is_file():
            raise InputError(f"--{key} {value}: no such file")
        if path.stat().st_size > 16 * 1024 * 1024:
            raise InputError(f"--{key} {value}: larger than 16 MB")
        inputs[key] = path.read_bytes()
    return inputs


def _prepare(pipe: Pipeline, device: torch.device, fast: bool, precision: str | None) -> None:
    """Move ``pipe`` to ``device`` and, if asked, switch on the fast path (unset settings follow the device)."""
    pipe.to(device)
    if not fast:
        return
    pipe.optimize(precision=precision)
    if device.type == "cpu" and precision in (None, "fp32"):
        log.info("--fast on the CPU: every fast-path setting resolves to off, so the pictures match a run without it")
    elif device.type == "cpu":
        log.info("--fast on the CPU computes in %s, not compiled (the pictures differ from float32 ones)", precision)
    else:
        log.info("--fast on %s: the first sampling call compiles the model (about a minute)", device)


def _fast_precision(told: str | None, fast: bool, recorded: str | None = None) -> str | None:
    """The fast path's precision: ``--precision``, else the recorded one; refused without the fast path."""
    if told is not None and not fast:
        raise InputError(f"--precision {told} sets the fast path's precision; add --fast")
    return (told or recorded) if fast else None


def _difference(replayed: np.ndarray, recorded: np.ndarray, meta: dict) -> str:
    """How a replayed picture differs from the recorded one, and the versions that made each."""
    import numpy as np
    import torch

    import ldmkit

    if replayed.shape != recorded.shape:
        text = f": size {replayed.shape[1]}x{replayed.shape[0]} against {recorded.shape[1]}x{recorded.shape[0]}"
    else:
        differ = replayed != recorded
        text = f": {int(differ.sum())} of {differ.size} values, by at most {int(np.abs(replayed - recorded).max())}/255"
    made = (meta.get("ldmkit"), meta.get("torch"))
    if made != (ldmkit.__version__, torch.__version__):
        text += (
            f" (recorded with ldmkit {made[0]}, torch {made[1]}; replayed with ldmkit {ldmkit.__version__}, "
            f"torch {torch.__version__}: versions may round differently)"
        )
    return text


def run(args) -> int:
    from ldmkit.folders import check_output_folder
    from ldmkit.generation import (
        decode_inputs,
        default_guidance,
        default_sampling,
        generate,
        open_model,
        open_pipeline,
        read_metadata,
        recorded_runtime,
        resolve_device,
        runtime_of,
        save_pictures,
        to_uint8,
    )

    check_output_folder(args.out)  # refused before any time goes into loading and sampling
    if args.replay:
        meta = read_metadata(args.replay)
        recorded = recorded_runtime(meta)
        if args.device is not None:
            device = resolve_device(args.device)
        else:  # the recorded device, checked before loading like one given on the command line
            hint = "pass --device to replay on another (the pictures may then differ)"
            device = resolve_device(recorded["device"], what=f"{args.replay}: recorded device", hint=hint)
        fast = recorded["fast"] if args.fast is None else args.fast
        precision = _fast_precision(args.precision, fast, recorded.get("precision"))
        name = meta["model"].get("name")  # a model picked by name is opened by name again
        pipe, model = open_model(name) if name is not None else open_pipeline(meta["model"].get("source"))
        if model["weights_sha256"] != meta["model"].get("weights_sha256"):
            raise InputError(f"{args.replay}: made with other weights than {model['source']} holds now")
        try:
            options = SampleOptions(**meta["options"])
        except TypeError as exc:
            raise InputError(f"{args.replay}: bad options in metadata ({exc})") from None
        inputs = decode_inputs(meta["inputs"])
        _prepare(pipe, device, fast, precision)
        images, _ = generate(pipe, meta["task"], inputs, options)
        index = int(meta.get("index", 0))
        paths = save_pictures(
            args.out,
            images[index : index + 1],
            task=meta["task"],
            inputs=inputs,
            options=options,
            model=model,
            first_index=index,
            runtime=runtime_of(pipe),
        )
        import numpy as np
        from PIL import Image

        with Image.open(args.replay) as original:
            recorded = np.asarray(original.convert("RGB"), dtype=np.int16)  # (H, W, 3)
        replayed = to_uint8(images[index : index + 1])[0].numpy().astype(np.int16)  # (H, W, 3)
        if replayed.shape == recorded.shape and (replayed == recorded).all():
            print(f"{paths[0]}: identical to {args.replay}")
            return 0
        print(f"{paths[0]}: DIFFERS from {args.replay}{_difference(replayed, recorded, meta)}")
        return 1
    if not args.task:
        raise InputError("--task is required (or --replay IMAGE.png)")
    if args.spec is not None and args.model is not None:
        raise InputError("--spec and --model both pick the pipeline; give one of them")
    device = resolve_device(args.device if args.device is not None else "cpu")
    precision = _fast_precision(args.precision, bool(args.fast))
    pipe, model = open_model(args.model) if args.model is not None else open_pipeline(args.spec)
    defaults = pipe.spec.sampling if pipe.spec is not None else None
    sampler, steps = default_sampling(pipe, args.task)
    options = SampleOptions(
        n=args.n if args.n is not None else 4,
        seed=args.seed if args.seed is not None else 0,
        sampler=args.sampler or sampler,
        steps=args.steps if args.steps is not None else steps,
        eta=args.eta if args.eta is not None else (defaults.eta if defaults else 0.0),
        guidance_scale=args.guidance if args.guidance is not None else default_guidance(pipe, args.task),
        progress=not args.no_progress,
    )
    if options.n < 1 or options.n > 1024:
        raise InputError(f"-n {options.n}: expected 1 to 1024 pictures")
    if options.steps < 1:
        raise InputError(f"--steps {options.steps}: expected at least 1")
    inputs = _read_inputs(args)
    from ldmkit.distributed_generate import generate_sharded, rank_device, world_size

    _prepare(pipe, rank_device(device), bool(args.fast), precision)

    if world_size() > 1:  # launched by torchrun: each rank makes its share, rank 0 writes them all
        sharded = generate_sharded(pipe, args.task, inputs, options)
        if sharded is None:
            return 0
        images = sharded
    else:
        images, _ = generate(pipe, args.task, inputs, options)
    paths = save_pictures(
        args.out, images, task=args.task, inputs=inputs, options=options, model=model, runtime=runtime_of(pipe)
    )
    for path in paths:
        print(path)
    return 0
