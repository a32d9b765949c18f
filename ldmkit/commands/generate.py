"""``ldmkit generate``: pictures for a task, each PNG carrying what replays it."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ldmkit.commands import adapter_flags
from ldmkit.errors import InputError, LdmkitError, SpecError

if TYPE_CHECKING:  # torch, numpy and the pipeline load only when the command runs
    import numpy as np
    import torch

    from ldmkit.pipeline import Pipeline

log = logging.getLogger(__name__)

# today's flags, shorthands for --input: those read a file named by their value, these pass text
FILE_SHORTHANDS = ("layout", "segmentation", "image", "mask")
TEXT_SHORTHANDS = ("label", "prompt", "negative_prompt", "negative_label", "strength")
MAX_INPUT_FILE = 16 * 1024 * 1024


def _flag(key: str) -> str:
    """The command-line flag of a shorthand input: ``negative_prompt`` -> ``--negative-prompt``."""
    return "--" + key.replace("_", "-")


def _registered(kind: str) -> str:
    """The registered names of ``kind``, for help texts (the registry is loaded when the CLI starts)."""
    from ldmkit.registry import get_registry

    try:
        return ", ".join(get_registry().names(kind)) or "none registered"
    except LdmkitError:  # a strict registry that failed: the CLI reports it itself
        return "see `ldmkit plugins`"


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
  ldmkit generate --task inpaint --input image=@pic.png --input mask=@mask.png --out out/
  ldmkit generate --task text2img --prompt "a red circle" --negative-prompt "a blue circle" --out out/
  ldmkit generate --task img2img --image pic.png --strength 0.6 --prompt "a green square" --out out/
  ldmkit generate --task class2img --label 0 --sampler dpmpp-2m --sampler-param spacing=trailing --out out/
  ldmkit generate --task text2img --prompt "a blue triangle" --device cuda --fast --out out/
  ldmkit generate --task text2img --prompt "a red circle and a blue square" --size 128 --out out/
  ldmkit generate --replay out/000000.png --out replay/

`ldmkit tasks NAME` lists a task's inputs; `ldmkit plugins` lists the samplers.""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--spec", help="pipeline folder (spec.yaml + weights) or spec file; default: the default model")
    p.add_argument("--model", help="a model a plugin provides, by name (`ldmkit plugins` lists them)")
    p.add_argument("--task", help=f"the task: {_registered('task')} (`ldmkit tasks` lists their inputs)")
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one of the task's inputs (repeatable); @PATH reads a file where the input takes one "
        "(a picture, mask, layout or map): --input colour=red, --input image=@pic.png",
    )
    p.add_argument("--label", help="class id or name (the same as --input label=VALUE)")
    p.add_argument("--prompt", help="caption (the same as --input prompt=VALUE)")
    p.add_argument(
        "--negative-prompt",
        help="what to steer away from: replaces the unconditional branch of guidance (--input negative_prompt=VALUE)",
    )
    p.add_argument(
        "--negative-label",
        help="class id or name to steer away from, for class-conditional models (--input negative_label=VALUE)",
    )
    p.add_argument(
        "--strength",
        help="img2img: how much of the picture to redraw, 0 (keep it) to 1 (--input strength=VALUE; default: the "
        "task's)",
    )
    p.add_argument("--layout", metavar="PATH", help="JSON file of labelled boxes (--input layout=@PATH)")
    p.add_argument("--segmentation", metavar="PATH", help="8-bit PNG map of class ids (--input segmentation=@PATH)")
    p.add_argument("--image", metavar="PATH", help="input picture (--input image=@PATH)")
    p.add_argument("--mask", metavar="PATH", help="mask picture (PNG, JPEG ...), white = fill in (--input mask=@PATH)")
    p.add_argument("-n", type=int, default=None, help="number of pictures (default 4)")
    p.add_argument("--seed", type=int, default=None, help="seed of the first picture (default 0)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the task's, else the spec's)")
    p.add_argument("--sampler", default=None, help=f"{_registered('sampler')} (default: the task's, else the spec's)")
    p.add_argument(
        "--sampler-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one of the sampler's params (repeatable; the value read as a YAML scalar): --sampler-param "
        "spacing=trailing",
    )
    p.add_argument(
        "--eta",
        type=float,
        default=None,
        help="scale of the fresh noise each step adds (DDIM: CompVis eta; ddpm, euler-a: 1 = full ancestral "
        "noise; default: the spec's, else the sampler's)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: the task's, else the spec's)",
    )
    p.add_argument(
        "--size",
        type=int,
        default=None,
        metavar="PIXELS",
        help="make square pictures of this side (a multiple of the model's size multiple; default: the task's "
        "input's size, else the spec's)",
    )
    p.add_argument("--width", type=int, default=None, metavar="PIXELS", help="picture width (the height: --height)")
    p.add_argument("--height", type=int, default=None, metavar="PIXELS", help="picture height (the width: --width)")
    p.add_argument(
        "--tile-size",
        type=int,
        default=None,
        metavar="CELLS",
        help="decode latents with a side over this many cells in overlapping tiles, to bound the decoder's "
        "memory on large pictures (default: the spec's, else whole)",
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
    p.add_argument(
        "--replay",
        metavar="IMAGE.png",
        help="make a picture again from its metadata and check it is identical (the one picture, or its batch "
        "where this CPU rounds a batch differently); a model folder it names loads only if given as --spec",
    )
    p.add_argument(
        "--replay-batch",
        action="store_true",
        help="with --replay: remake the picture's whole recorded batch (the original float path; slower)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    adapter_flags.add_arguments(p)
    p.set_defaults(run=run)


def _pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
    """``KEY=VALUE`` items split at the first ``=``; refused unless each has a key."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{flag} {item!r}: expected KEY=VALUE")
        pairs.append((key.strip(), value))
    return pairs


def _read_file(shown: str, value: str) -> bytes:
    """The bytes of file ``value``; ``shown`` is how the command line gave it, for messages."""
    path = Path(value)
    if not path.is_file():
        raise InputError(f"{shown}: no such file")
    if path.stat().st_size > MAX_INPUT_FILE:
        raise InputError(f"{shown}: larger than 16 MB")
    return path.read_bytes()


def _input_names(task) -> tuple[str, ...]:
    """The inputs ``task`` reads: a ConditionedTask says; any other Task reads its request model's fields."""
    names = getattr(task, "input_names", None)
    return tuple(names()) if callable(names) else tuple(task.Request.model_fields)


def _required_inputs(task) -> tuple[str, ...]:
    required = getattr(task, "required_inputs", None)
    if callable(required):
        return tuple(required())
    return tuple(name for name, field in task.Request.model_fields.items() if field.is_required())


def _unknown_input(task, key: str) -> InputError:
    import difflib

    names = _input_names(task)
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return InputError(
        f"task {task.name!r} does not read {key}{hint}; its inputs: {', '.join(names) or 'none'} "
        f"(`ldmkit tasks {task.name}` describes them)"
    )


def _needed(task, missing: list[str]) -> InputError:
    flags = [_flag(m) if m in FILE_SHORTHANDS + TEXT_SHORTHANDS else f"--input {m}=VALUE" for m in missing]
    return InputError(f"task {task.name!r} needs {', '.join(flags)} (`ldmkit tasks {task.name}` describes them)")


def _read_inputs(args, task) -> dict:
    """The task's inputs from ``--input KEY=VALUE`` and the shorthand flags: text, or the bytes of files."""
    from ldmkit.inputs import describe_request

    given: dict[str, tuple[str, str, bool]] = {}  # key -> (as given, value, whether the value names a file)
    for key in TEXT_SHORTHANDS + FILE_SHORTHANDS:
        if getattr(args, key) is not None:
            given[key] = (f"{_flag(key)} {getattr(args, key)}", getattr(args, key), key in FILE_SHORTHANDS)
    takes_file = {field.name: field.takes_file for field in describe_request(task.Request)}
    for key, value in _pairs(args.input, "--input"):
        if key in given:
            raise InputError(f"--input {key}: {key} is given twice (by {given[key][0].split()[0]} too)")
        from_file = takes_file.get(key, False) and value.startswith("@")
        given[key] = (f"--input {key}={value}", value[1:] if from_file else value, from_file)
    for key in given:
        if key not in _input_names(task):
            raise _unknown_input(task, key)
    missing = [name for name in _required_inputs(task) if name not in given]
    if missing:
        raise _needed(task, missing)
    return {key: _read_file(shown, value) if from_file else value for key, (shown, value, from_file) in given.items()}


def _replay_files(args) -> dict[str, bytes]:
    """Input files given with ``--replay`` (``--input KEY=@PATH`` or a file flag): those a picture recorded by hash."""
    files = {key: _read_file(f"--{key} {value}", value) for key in FILE_SHORTHANDS if (value := getattr(args, key))}
    for key, value in _pairs(args.input, "--input"):
        if not value.startswith("@"):
            raise InputError(
                f"--input {key}={value}: with --replay, inputs come from the picture; only files are given"
            )
        files[key] = _read_file(f"--input {key}={value}", value[1:])
    given = [_flag(key) for key in TEXT_SHORTHANDS if getattr(args, key) is not None]
    if given:
        raise InputError(f"{', '.join(given)}: with --replay, inputs come from the picture; only files are given")
    return files


def _sampler_params(items: list[str]) -> dict:
    """``--sampler-param KEY=VALUE`` items, each value read as a YAML scalar (``10``, ``0.5``, ``true``, ``text``)."""
    import math

    from ldmkit.specs import parse_value

    params: dict = {}
    for key, text in _pairs(items, "--sampler-param"):
        if key in params:
            raise InputError(f"--sampler-param {key}: given twice")
        try:
            value = parse_value(text, f"--sampler-param {key}", text_if_not_yaml=True) if text.strip() else text
        except SpecError as exc:  # past a limit (nesting, number length)
            raise InputError(str(exc)) from None
        if not isinstance(value, (str, int, float, bool)) and value is not None:
            value = text  # a list, mapping or date: the text as written, for the sampler's Params to judge
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"--sampler-param {key}={text!r}: must be a finite number")
        params[key] = value
    return params


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


CLI_FLAGS = {"n": "-n", "seed": "--seed", "sampler": "--sampler", "steps": "--steps", "eta": "--eta"}
CLI_FLAGS["guidance_scale"] = "--guidance"
CLI_FLAGS["tile_size"] = "--tile-size"
CLI_FLAGS["size"] = "--size"


def _size_told(args) -> tuple[int | None, int | None, str] | None:
    """(height, width, flags as given) from --size or --width/--height (a side left out is None); None if none given."""
    if args.size is not None and (args.width is not None or args.height is not None):
        raise InputError("--size gives both sides; give it or --width/--height, not both")
    if args.size is not None:
        told: tuple[int | None, int | None, str] = (args.size, args.size, f"--size {args.size}")
    elif args.width is not None or args.height is not None:
        shown = " ".join(f"--{k} {v}" for k, v in (("width", args.width), ("height", args.height)) if v is not None)
        told = (args.height, args.width, shown)
    else:
        return None
    for side in told[:2]:
        if side is not None and side < 1:
            raise InputError(f"{told[2]}: a side must be a positive number of pixels")
    return told


def _picture_size(pipe: Pipeline, task: str, told: tuple[int | None, int | None, str]) -> tuple[int, int]:
    """The size the flags ask for, a side left out taken from the task's default size; checked against the model."""
    from ldmkit.options import resolve_options
    from ldmkit.sizing import check_picture_size

    height, width, shown = told
    if height is None or width is None:
        default = resolve_options(pipe, task).size or pipe.default_size
        if default is None:
            raise InputError(f"{shown}: this pipeline has no default size to take the other side from; give both")
        height, width = height or default[0], width or default[1]
    return check_picture_size(pipe, (height, width), shown)


def _check_task(pipe: Pipeline, task: str) -> None:
    """Refuse a task the pipeline does not serve, suggesting the closest one it does."""
    import difflib

    served = sorted(pipe.spec.tasks) if pipe.spec is not None else []
    if served and task not in served:
        close = difflib.get_close_matches(task, served, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InputError(f"this pipeline does not serve task {task!r}{hint}; it serves: {', '.join(served)}")


def _replay(args) -> int:
    from ldmkit.generation import read_metadata, recorded_runtime, resolve_device
    from ldmkit.replay import open_recorded_model, replay_picture

    meta = read_metadata(args.replay)
    recorded = recorded_runtime(meta)
    if args.device is not None:
        device = resolve_device(args.device)
    else:  # the recorded device, checked before loading like one given on the command line
        hint = "pass --device to replay on another (the pictures may then differ)"
        device = resolve_device(recorded["device"], what=f"{args.replay}: recorded device", hint=hint)
    fast = recorded["fast"] if args.fast is None else args.fast
    precision = _fast_precision(args.precision, fast, recorded.get("precision"))
    adapters = adapter_flags.parse_flags(args)
    pipe, model = open_recorded_model(args.replay, meta, spec=args.spec, model=args.model)
    _check_task(pipe, meta["task"])
    adapter_flags.apply_adapter_flags(pipe, adapters)
    adapter_flags.check_recorded_adapters(args.replay, meta, pipe)
    model = adapter_flags.with_adapters(model, pipe)
    _prepare(pipe, device, fast, precision)
    result = replay_picture(
        pipe,
        args.replay,
        meta,
        model,
        args.out,
        whole_batch=args.replay_batch,
        progress=not args.no_progress,
        files=_replay_files(args),
    )
    if result.identical:
        print(f"{result.path}: identical to {args.replay}")
        return 0
    import numpy as np

    from ldmkit.replay import recorded_pixels

    original = recorded_pixels(args.replay).astype(np.int16)  # (H, W, 3)
    difference = _difference(result.pixels.astype(np.int16), original, meta)
    print(f"{result.path}: DIFFERS from {args.replay}{difference}")
    return 1


def run(args) -> int:
    from ldmkit.folders import check_output_folder
    from ldmkit.generation import (
        generate,
        open_model,
        open_pipeline,
        resolve_device,
        runtime_of,
        save_pictures,
    )
    from ldmkit.generation_options import check_label, check_options, check_sampler_params
    from ldmkit.options import resolve_options, sampler_type

    check_output_folder(args.out)  # refused before any time goes into loading and sampling
    if args.replay:
        sized = [f"--{k.replace('_', '-')}" for k in ("size", "width", "height", "tile_size") if getattr(args, k)]
        if sized:
            raise InputError(f"{', '.join(sized)}: with --replay, the size and tiling come from the picture")
        return _replay(args)
    if args.replay_batch:
        raise InputError("--replay-batch goes with --replay IMAGE.png")
    if not args.task:
        raise InputError("--task is required (or --replay IMAGE.png)")
    if args.spec is not None and args.model is not None:
        raise InputError("--spec and --model both pick the pipeline; give one of them")
    told = {k: getattr(args, k) for k in ("n", "seed", "sampler", "steps", "eta")} | {"guidance_scale": args.guidance}
    told = {k: v for k, v in told.items() if v is not None}
    if args.tile_size is not None:
        told["tile_size"] = args.tile_size
    size_told = _size_told(args)
    check_options({"n": 4, **told}, CLI_FLAGS)  # before any time goes into loading
    for key in ("label", "negative_label"):
        if getattr(args, key) is not None:
            check_label(getattr(args, key), where=_flag(key))

    device = resolve_device(args.device if args.device is not None else "cpu")
    precision = _fast_precision(args.precision, bool(args.fast))
    adapters = adapter_flags.parse_flags(args)  # files checked before any time goes into loading
    pipe, model = open_model(args.model) if args.model is not None else open_pipeline(args.spec)
    _check_task(pipe, args.task)
    if size_told is not None:
        told["size"] = _picture_size(pipe, args.task, size_told)
    adapter_flags.apply_adapter_flags(pipe, adapters)
    model = adapter_flags.with_adapters(model, pipe)
    # spec < task defaults < the command line, layered once (ldmkit.options); then the CLI's own bounds
    layered = resolve_options(pipe, args.task, {"n": 4, **told})
    fields = ("n", "seed", "sampler", "steps", "eta", "guidance_scale", "size", "tile_size")
    chosen = {k: getattr(layered, k) for k in fields}
    params = _sampler_params(args.sampler_param)
    if params:  # checked by the sampler's own Params; recorded as given, in the form they validate to
        name = sampler_type(chosen["sampler"])
        base = {} if isinstance(chosen["sampler"], str) else dict(chosen["sampler"].params)  # a spec's {type, params}
        checked = check_sampler_params(pipe.registry, name, {**base, **params})
        # the fields given (a deprecated key such as discretize is recorded under its current name)
        chosen["sampler"] = {"type": name, "params": checked.model_dump(mode="json", exclude_unset=True)}
    options = check_options({**chosen, "progress": not args.no_progress}, CLI_FLAGS).sample_options()
    task = pipe.task(args.task)
    inputs = _read_inputs(args, task)
    for key in ("label", "negative_label"):
        if getattr(args, key) is None and isinstance(inputs.get(key), str):
            check_label(inputs[key], where=f"--input {key}")
    defaults = getattr(task, "input_defaults", None)  # recorded too, so each picture names e.g. its strength
    if callable(defaults):
        inputs = {**defaults(), **inputs}
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
