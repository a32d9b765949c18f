"""FlashAttention-4 (CuTe DSL) against SDPA and FlashAttention-3 at the SD v1 UNet's attention shapes.

Batch 16, 8 heads, bf16, (B, S, H, D) layout. Methodology of ``benchmarks/gpu_attention_kernels.py``:
the same random inputs (same generator seeds), us per call from CUDA graphs of 10 calls (median of
5 replays), relative error against float32 SDPA on the float32 originals (TF32 off).
Where a kernel's launch cannot be captured in a CUDA graph, its us come from CUDA events around 10
back-to-back eager calls after warm-up (median of 5), and the table says so. Eager event timings of
every kernel are reported as well.

Phase 1 times SDPA and FA3 at every shape; phase 2 imports FA4 and times it shape by shape (a crash
or hang inside FA4 then costs no baseline). The markdown file is rewritten after every step.

    OUT=results bash benchmarks/fa4_run.sh                       # on a Hopper GPU: unpack the bundle, run this
    python3 benchmarks/gpu_fa4_attention.py --out fa4.md         # the same, FA4's site already on PYTHONPATH
    python3 benchmarks/gpu_fa4_attention.py --out /tmp/d.md --dry-run   # CPU, tiny sizes, SDPA only

FlashAttention-4 is not a dependency: ``benchmarks/fa4_bundle.sh`` downloads its wheels and packs
the pruned site for a machine without a network (about 53 MiB).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger("gpu_fa4_attention")

ROOT = Path(__file__).resolve().parent.parent
HEADS = 8
CONTEXT_TOKENS = 77
CALLS = 10  # calls per CUDA graph / per event-timed burst
REPEATS = 5
# (label, latent side, keys (None: self), head width, calls per UNet call), as gpu_attention_kernels.py:
# 5 transformer blocks at 64x64, 32x32 and 16x16, 1 at 8x8, each a self- and a cross-attention.
MAIN_SHAPES = [
    ("self 64x64", 64, None, 40, 5),
    ("cross 64x64", 64, CONTEXT_TOKENS, 40, 5),
    ("self 32x32", 32, None, 80, 5),
    ("self 16x16", 16, None, 160, 5),
]
EXTRA_SHAPES = [  # the rest of one UNet call, for a sum comparable to gpu_attention_kernels.py's
    ("cross 32x32", 32, CONTEXT_TOKENS, 80, 5),
    ("cross 16x16", 16, CONTEXT_TOKENS, 160, 5),
    ("self 8x8", 8, None, 160, 1),
    ("cross 8x8", 8, CONTEXT_TOKENS, 160, 1),
]
VARIANTS = ["SDPA bf16", "FA3 bf16", "FA4 bf16"]

sys.path.insert(0, str(ROOT / "benchmarks"))  # _common.py, when run as a script
from _common import graphed_us, markdown_table, rel_err  # noqa: E402


def short(exc: BaseException, limit: int = 110) -> str:
    """One line of an exception for a table cell (no pipes, no newlines)."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ").replace("|", "/").replace("`", "'")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cuda_sync() -> None:
    if torch.cuda.is_available():
        try:
            torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001
            log.error("torch.cuda.synchronize failed: %s", exc)


def event_us(fn: Callable[[], object], calls: int = CALLS, repeats: int = REPEATS, warmup: int = 3) -> float:
    """us per call from CUDA events around ``calls`` back-to-back eager calls (median of ``repeats``)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times)


def graph_check(fn: Callable[[], torch.Tensor], ref: torch.Tensor, eager_err: float) -> str:
    """Capture one call in a CUDA graph, poison its output, replay: '' when the replay recomputed it.

    Guards against a launch that goes to another stream than the capturing one (the graph would then
    hold no kernel and its replays would time nothing)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    err = rel_err(out.float(), ref)
    del graph
    if not err == err or err > max(5 * eager_err, 1e-2):  # nan: the replay did not write the output
        return f"graph replay output wrong (rel. error {err:.3g}, eager {eager_err:.3g}): kernel not captured?"
    return ""


def cpu_us(fn: Callable[[], object], calls: int = CALLS, repeats: int = REPEATS, warmup: int = 1) -> float:
    """Dry run: us per call by perf_counter."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) * 1e6 / calls)
    return statistics.median(times)


# --- kernels ----------------------------------------------------------------------------------------
def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, N, H, d) inputs -> (B, N, H, d), by PyTorch's SDPA (default backend) on heads-first views."""
    return F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale
    ).transpose(1, 2)


def load_fa3() -> Callable[..., torch.Tensor]:
    import fa3_fwd_interface  # noqa: F401  (defines torch.ops.fa3_fwd._flash_attn_forward)

    op = torch.ops.fa3_fwd._flash_attn_forward

    def fa3(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        return op(q, k, v, softmax_scale=scale)[0]

    return fa3


def load_fa4() -> Callable[..., torch.Tensor]:
    from flash_attn.cute import flash_attn_func

    def fa4(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        res = flash_attn_func(q, k, v, softmax_scale=scale, causal=False)
        return res[0] if isinstance(res, tuple) else res

    return fa4


def dry_fa4(*_args: object) -> torch.Tensor:
    """Dry run's FA4 stand-in: exercises the failure path of the table."""
    raise RuntimeError("dry run: FA4 needs an sm_90 GPU")


# --- results and the markdown file ------------------------------------------------------------------
@dataclass
class Cell:
    us: float | None = None  # the number for the main table
    method: str = ""  # "graph", "events" or "cpu"
    events_us: float | None = None  # eager CUDA-event timing, always attempted
    err: float | None = None
    first_s: float | None = None  # first call, wall seconds incl. sync (FA4: JIT compile)
    note: str = ""  # a short failure / skip note for the table
    errors: list[str] = field(default_factory=list)  # full error texts for the notes section


@dataclass
class Row:
    label: str
    tokens: int
    keys: int
    d: int
    calls: int
    main: bool
    cells: dict[str, Cell] = field(default_factory=dict)


class Report:
    def __init__(self, path: Path, title: str, batch: int) -> None:
        self.path, self.title, self.batch = path, title, batch
        self.rows: list[Row] = []
        self.info: list[str] = []
        self.notes: list[str] = []

    def us_cell(self, row: Row, name: str) -> str:
        c = row.cells.get(name)
        if c is None:
            return "pending"
        if c.us is None:
            return c.note or "failed"
        tag = {"graph": "g", "events": "e", "cpu": "cpu"}.get(c.method, c.method)
        return f"{c.us:.1f} ({tag})"

    @staticmethod
    def ratio(a: Cell | None, b: Cell | None) -> str:
        if a is None or b is None or a.us is None or b.us is None or b.us <= 0:
            return ""
        return f"{a.us / b.us:.2f}x"

    def render(self) -> str:
        out = [self.title, ""] + self.info + [""]
        out += [
            "us per call; (g) = CUDA graph of 10 calls, median of 5 replays (as gpu_attention_kernels.py); "
            "(e) = CUDA events around 10 back-to-back eager calls after 3 warm-up calls, median of 5 "
            "(used where graph capture failed); (cpu) = dry run, perf_counter. "
            "Error = ||out - ref|| / ||ref|| against float32 SDPA on the float32 inputs (TF32 off). "
            "'FA4 vs X' = X us / FA4 us (> 1: FA4 faster).",
            "",
        ]
        header = ["shape", "q tokens", "keys", "head", "SDPA bf16 us", "FA3 bf16 us", "FA4 bf16 us",
                  "FA4 vs SDPA", "FA4 vs FA3", "SDPA err", "FA3 err", "FA4 err", "FA4 first call s"]  # fmt: skip
        body = []
        for row in self.rows:
            c = row.cells
            errs = [f"{c[n].err:.2e}" if n in c and c[n].err is not None else "" for n in VARIANTS]
            fa4 = c.get("FA4 bf16")
            first = f"{fa4.first_s:.2f}" if fa4 is not None and fa4.first_s is not None else ""
            label = row.label if row.main else f"{row.label} (extra)"
            body.append([label, str(row.tokens), str(row.keys), str(row.d)]
                        + [self.us_cell(row, n) for n in VARIANTS]
                        + [self.ratio(c.get("SDPA bf16"), fa4), self.ratio(c.get("FA3 bf16"), fa4)]
                        + errs + [first])  # fmt: skip
        # one UNet call: sum of us x calls per UNet call, per variant
        sum_rows = [("one UNet call, the 4 requested shapes (x5 each)", [r for r in self.rows if r.main])]
        if len(self.rows) == len(MAIN_SHAPES) + len(EXTRA_SHAPES):
            sum_rows.append(("one UNet call, every shape x its calls (as gpu_attention_kernels.py)", self.rows))
        for label, chosen in sum_rows:
            cells = []
            for n in VARIANTS:
                got = [r.cells.get(n) for r in chosen]
                if chosen and all(g is not None and g.us is not None for g in got):
                    methods = sorted({g.method for g in got})
                    total = sum(r.calls * g.us for r, g in zip(chosen, got, strict=True))
                    cells.append(f"{total / 1e3:.3f} ms ({'+'.join(methods)})")
                else:
                    cells.append("incomplete")
            body.append([f"**{label}**", "", "", ""] + cells + [""] * 6)
        out += [markdown_table(header, body), ""]
        # eager (event-timed) numbers of every kernel
        ev_rows = []
        for row in self.rows:
            cells = []
            for n in VARIANTS:
                c = row.cells.get(n)
                cells.append("" if c is None or c.events_us is None else f"{c.events_us:.1f}")
            ev_rows.append([row.label] + cells)
        out += ["Eager timings, us per call (CUDA events around 10 back-to-back calls, median of 5; "
                "includes any host launch overhead the GPU cannot hide):", "",
                markdown_table(["shape"] + [f"{n} eager us" for n in VARIANTS], ev_rows), ""]  # fmt: skip
        where: dict[tuple[str, str], list[str]] = {}  # (variant, message) -> shapes, so repeats read once
        for row in self.rows:
            for n, c in row.cells.items():
                for e in c.errors:
                    where.setdefault((n, e), []).append(row.label)
        errs = [f"- {n} at {', '.join(labels)}: {e}" for (n, e), labels in where.items()]
        if errs or self.notes:
            out += ["## Notes and errors", ""] + self.notes + errs + [""]
        return "\n".join(out)

    def write(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            tmp.write_text(self.render())
            os.replace(tmp, self.path)
        except Exception:  # noqa: BLE001
            log.exception("writing %s failed", self.path)


# --- measuring ---------------------------------------------------------------------------------------
@dataclass
class Inputs:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    ref: torch.Tensor
    scale: float


def make_inputs(batch: int, heads: int, tokens: int, keys: int, d: int, device: str) -> Inputs:
    """Same seeds and draw order as gpu_attention_kernels.py's bench_shape."""
    g = torch.Generator(device=device).manual_seed(tokens + keys + d)
    q = torch.randn(batch, tokens, heads, d, device=device, generator=g)
    k = torch.randn(batch, keys, heads, d, device=device, generator=g)
    v = torch.randn(batch, keys, heads, d, device=device, generator=g)
    scale = d**-0.5
    with torch.no_grad():
        ref = sdpa(q, k, v, scale)  # float32, TF32 off
    return Inputs(q.bfloat16(), k.bfloat16(), v.bfloat16(), ref, scale)


class Bencher:
    def __init__(self, dry: bool) -> None:
        self.dry = dry
        self.no_graph: dict[str, str] = {}  # variant -> why graph capture is not tried again

    def measure(self, name: str, kernel: Callable[..., torch.Tensor], x: Inputs) -> Cell:
        cell = Cell()

        def fn() -> torch.Tensor:
            return kernel(x.q, x.k, x.v, x.scale)

        with torch.no_grad():
            # first call (JIT compile for FA4) and error
            try:
                t0 = time.perf_counter()
                out = fn()
                cuda_sync()
                cell.first_s = time.perf_counter() - t0
                cell.err = rel_err(out.float(), x.ref)
                del out
            except Exception as exc:  # noqa: BLE001
                log.exception("%s: first call failed", name)
                cell.note, cell.errors = f"failed: {short(exc)}", [f"first call: {short(exc, 600)}"]
                cuda_sync()
                return cell
            if self.dry:
                try:
                    cell.us, cell.method = cpu_us(fn), "cpu"
                except Exception as exc:  # noqa: BLE001
                    cell.note, cell.errors = f"timing failed: {short(exc)}", [repr(exc)]
                return cell
            # eager event timing (always)
            try:
                cell.events_us = event_us(fn)
            except Exception as exc:  # noqa: BLE001
                log.exception("%s: event timing failed", name)
                cell.errors.append(f"event timing: {short(exc, 400)}")
                cuda_sync()
            # CUDA graph timing, unless capture already failed for this kernel
            if name in self.no_graph:
                cell.errors.append(f"graph not tried (capture failed earlier: {self.no_graph[name]})")
            else:
                try:
                    bad = graph_check(fn, x.ref, cell.err if cell.err is not None else 0.0)
                    if bad:
                        log.error("%s: %s; using events", name, bad)
                        self.no_graph[name] = bad
                        cell.errors.append(f"{bad} (events used)")
                    else:
                        cell.us, cell.method = graphed_us(fn, calls=CALLS, repeats=REPEATS), "graph"
                except Exception as exc:  # noqa: BLE001
                    log.exception("%s: CUDA graph capture/replay failed; falling back to events", name)
                    self.no_graph[name] = short(exc, 300)
                    cell.errors.append(f"CUDA graph failed, events used: {short(exc, 400)}")
                    cuda_sync()
            if cell.us is None and cell.events_us is not None:
                cell.us, cell.method = cell.events_us, "events"
            if cell.us is None:
                cell.note = "timing failed"
        return cell


def version_of(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown file, rewritten after every step")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--no-extra", action="store_true", help="only the 4 requested shapes (no full-UNet sum)")
    parser.add_argument("--budget-s", type=float, default=75.0, help="skip extra shapes' FA4 runs past this many s")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, SDPA only: checks the table path")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s",
                        force=True)  # fmt: skip
    t_start = time.perf_counter()
    dry = args.dry_run
    device = "cpu" if dry else "cuda"
    batch, heads, div = (2, 2, 8) if dry else (args.batch, HEADS, 1)
    shapes = [(*s, True) for s in MAIN_SHAPES] + ([] if args.no_extra else [(*s, False) for s in EXTRA_SHAPES])

    torch.backends.cuda.matmul.allow_tf32 = False  # the float32 reference in full float32
    torch.backends.cudnn.allow_tf32 = False
    dev_name = "CPU (dry run)"
    if not dry:
        try:
            dev_name = torch.cuda.get_device_name()
        except Exception as exc:  # noqa: BLE001
            log.exception("no CUDA device")
            dev_name = f"no CUDA device: {short(exc)}"
    title = f"# FlashAttention-4 vs SDPA / FA3 at SD v1 attention shapes, batch {batch}, {heads} heads, bf16"
    if dry:
        title += " (DRY RUN: CPU, tiny sizes, no kernel numbers)"
    report = Report(args.out, title, batch)
    report.info = [
        f"- device: {dev_name}; torch {torch.__version__} (CUDA {torch.version.cuda}); python {sys.version.split()[0]}",
        f"- flash-attn-4 {version_of('flash-attn-4')}, nvidia-cutlass-dsl {version_of('nvidia-cutlass-dsl')}, "
        f"quack-kernels {version_of('quack-kernels')}, fa3-fwd {version_of('fa3-fwd')}",
        f"- PYTHONPATH={os.environ.get('PYTHONPATH', '')}",
    ]
    log.info("device %s, %d shapes, out %s", dev_name, len(shapes), args.out)

    # phase 1: inputs, reference, SDPA and FA3 at every shape
    kernels: dict[str, Callable[..., torch.Tensor]] = {"SDPA bf16": sdpa}
    missing: dict[str, str] = {}
    if dry:
        missing["FA3 bf16"] = "skipped (dry run)"
    else:
        try:
            kernels["FA3 bf16"] = load_fa3()
        except Exception as exc:  # noqa: BLE001
            log.warning("fa3_fwd not importable: %s", exc)
            missing["FA3 bf16"] = "n/a (fa3_fwd not importable)"
            report.notes.append(f"- FA3 column skipped: {short(exc, 300)}")
    bencher = Bencher(dry)
    inputs: dict[str, Inputs] = {}
    for label, side, keys, d, calls, is_main in shapes:
        tokens = max(1, (side // div) ** 2)
        nkeys = tokens if keys is None else keys
        row = Row(label, tokens, nkeys, d, calls, is_main)
        report.rows.append(row)
        try:
            inputs[label] = make_inputs(batch, heads, tokens, nkeys, d, device)
        except Exception as exc:  # noqa: BLE001
            log.exception("%s: inputs / reference failed", label)
            for n in VARIANTS:
                row.cells[n] = Cell(note=f"inputs failed: {short(exc)}")
            report.write()
            continue
        for name in ("SDPA bf16", "FA3 bf16"):
            if name in missing:
                row.cells[name] = Cell(note=missing[name])
                continue
            row.cells[name] = bencher.measure(name, kernels[name], inputs[label])
            c = row.cells[name]
            log.info("%s %s: us %s (%s), eager %s, err %s", label, name, c.us, c.method, c.events_us, c.err)
        report.write()
    log.info("phase 1 done at %.1f s", time.perf_counter() - t_start)

    # phase 2: FA4
    fa4: Callable[..., torch.Tensor] | None = None
    if dry:
        fa4 = dry_fa4
    else:
        try:
            t0 = time.perf_counter()
            fa4 = load_fa4()
            report.info.append(f"- FA4 import (flash_attn.cute): {time.perf_counter() - t0:.1f} s")
            log.info("FA4 imported in %.1f s", time.perf_counter() - t0)
        except Exception:  # noqa: BLE001
            log.exception("FA4 import failed")
            tb = traceback.format_exc(limit=4).strip()[-1500:].replace("\n", "\n    ")
            report.notes.append(f"- FA4 import failed:\n\n    {tb}\n")
    for row in report.rows:
        if fa4 is None:
            row.cells["FA4 bf16"] = Cell(note="import failed")
            continue
        if row.label not in inputs:
            continue
        elapsed = time.perf_counter() - t_start
        if not row.main and elapsed > args.budget_s:
            row.cells["FA4 bf16"] = Cell(note=f"skipped (time budget, {elapsed:.0f} s)")
            report.write()
            continue
        try:
            row.cells["FA4 bf16"] = bencher.measure("FA4 bf16", fa4, inputs[row.label])
        except Exception as exc:  # noqa: BLE001  (measure catches its own; this is a last guard)
            log.exception("%s FA4 failed", row.label)
            row.cells["FA4 bf16"] = Cell(note=f"failed: {short(exc)}")
        c = row.cells["FA4 bf16"]
        log.info("%s FA4: us %s (%s), eager %s, err %s, first call %s s",
                 row.label, c.us, c.method, c.events_us, c.err, c.first_s)  # fmt: skip
        report.write()
    total = time.perf_counter() - t_start
    report.info.append(f"- whole benchmark: {total:.1f} s")
    report.write()
    log.info("done in %.1f s; wrote %s", total, args.out)
    sys.stdout.write(report.render() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
