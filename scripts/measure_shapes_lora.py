"""Measure what the Shapes LoRA of ``examples/train/shapes-lora.yaml`` learned, with the Shapes parser.

For each shape, ``n`` text2img pictures of the colourless prompt ``"a <shape>"`` are made by the shipped
model with and without the LoRA; a picture counts as rendering the taught phrase when the parser reads
exactly ``"a magenta <shape>"`` from it. Control prompts that name a colour (``"a red circle"`` ...)
show whether the LoRA left the rest of the language alone. Prints a Markdown table::

    python scripts/measure_shapes_lora.py runs/shapes-lora/lora.safetensors
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import ldmkit
from ldmkit.generation import default_model_dir, generate
from ldmkit.interfaces import SampleOptions
from ldmkit.options import resolve_options

log = logging.getLogger("measure_shapes_lora")

TAUGHT = {"a circle": "a magenta circle", "a square": "a magenta square", "a triangle": "a magenta triangle"}
CONTROLS = {p: p for p in ("a red circle", "a green square", "a blue triangle", "a magenta square")}


def rate(pipe: ldmkit.Pipeline, prompt: str, expected: str, n: int, seed: int, steps: int) -> float:
    """Fraction of ``n`` pictures of ``prompt`` that the parser reads as exactly ``expected``."""
    from ldmkit_shapes.metrics import caption_exact_match

    layered = resolve_options(pipe, "text2img", {"n": n, "seed": seed, "steps": steps})
    options = SampleOptions(n=n, seed=seed, steps=steps, sampler=layered.sampler, guidance_scale=layered.guidance_scale)
    images, _ = generate(pipe, "text2img", {"prompt": prompt}, options)
    return caption_exact_match(images, [expected] * n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lora", help="the trained LoRA (lora.safetensors)")
    parser.add_argument("--n", type=int, default=8, help="pictures per prompt")
    parser.add_argument("--seed", type=int, default=1000, help="sampling seed of the first picture")
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    pipe = ldmkit.Pipeline.load(default_model_dir())
    rows = []
    for prompts in (TAUGHT, CONTROLS):
        for prompt, expected in prompts.items():
            base = rate(pipe, prompt, expected, args.n, args.seed, args.steps)
            adapter = pipe.load_lora(args.lora)
            try:
                with_lora = rate(pipe, prompt, expected, args.n, args.seed, args.steps)
            finally:
                pipe.remove_adapter(adapter)
            rows.append({"prompt": prompt, "read as": expected, "base": base, "lora": with_lora})
            log.info("%s -> %s: base %.2f, with the LoRA %.2f", prompt, expected, base, with_lora)
    print("| prompt | counted when the parser reads | shipped model | with the LoRA |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        n = args.n
        print(
            f"| `{row['prompt']}` | `{row['read as']}` | {round(row['base'] * n)}/{n} | {round(row['lora'] * n)}/{n} |"
        )
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
