"""Where every millisecond of a timed call goes: its kernels by kind, and the idle time between them.

A profile of kernel times alone (gpu_unet_profile.py) can fall short of the timed call: a CUDA graph
replays its kernels back to back, but each still waits for the previous one to drain and the next to
fill the GPU, and clocks can differ between the profiled and the timed calls. This module profiles
``calls`` consecutive calls of the very function that was timed (a replayed CUDA graph included:
CUPTI sees the kernels inside graphs), lays every kernel on the device's time line, and splits the
span into kernel time by kind plus the gaps between kernels, so the rows add up to the span:

    span per call = sum of kernel time (overlaps counted once) + idle gaps

and sets that span next to the same calls timed without the profiler.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import statistics
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence

import torch

# gaps between two kernels up to this long are the GPU's own hand-over inside a graph or a queue of
# launches; longer ones are time the GPU waited for the host (a launch, a synchronisation)
SHORT_GAP_US = 5.0

# (kind, pattern on the lower-case kernel name), first match wins
KINDS: tuple[tuple[str, str], ...] = (
    # ldmkit's own kernels, by their exact names
    ("GEGLU kernel", r"^geglu_"),
    ("GroupNorm kernels", r"^(partial_moments|group_scale_shift|scale_shift_apply|group_apply)$"),
    ("attention (SDPA: cuDNN, PyTorch's flash)", r"sdpa|pytorch_flash|fmha|efficient_attention"),
    # FlashAttention-3 (flash::FlashAttnFwdSm90) and -4 (..flash_fwd_sm90FlashAttentionForwardSm90..); not
    # "cute" alone: cuDNN's convolutions are named "..._execute_..."
    ("attention (FlashAttention-3/4)", r"flash_fwd|flash_attn|flashattn|flash::|flashattention"),
    # the compiler's kernels by what they do: its names list every op the fused region came from, so a
    # residual add behind a GroupNorm is named "..._native_group_norm_.." too
    ("Triton: LayerNorm (+ residual add)", r"^triton_(per|red)_.*layer_norm"),
    ("Triton: other reductions", r"^triton_(per|red)_"),
    ("Triton: pointwise (residual adds, concatenations, casts)", r"^triton_"),
    ("convolutions (cuDNN)", r"fprop|dgrad|wgrad|conv|implicit_gemm|winograd|_cudnn|nhwcaddpadding"),
    ("matmuls (cuBLAS)", r"gemm|nvjet|cutlass|matmul|sm90_"),
    ("memset / memcpy", r"memset|memcpy"),
)


def kind_of(name: str) -> str:
    """The kind of work a kernel does, from its name."""
    lower = name.lower()
    for kind, pattern in KINDS:
        if re.search(pattern, lower):
            return kind
    return "other"


@dataclasses.dataclass(frozen=True)
class Span:
    """One kernel on the device's time line (microseconds)."""

    name: str
    start: float
    end: float


@dataclasses.dataclass
class Accounting:
    """Per call: kernel time by kind, idle gaps, and the span they add up to (all in ms)."""

    calls: int
    kernels: int
    by_kind: dict[str, float]
    overlap: float  # kernel time that ran beside another kernel (counted once in the span)
    short_gaps: float
    long_gaps: float
    span: float
    # (kernel name, its kind, launches per call, ms per call), the longest first: what each kind is made of
    by_name: list[tuple[str, str, float, float]] = dataclasses.field(default_factory=list)

    @property
    def kernel_time(self) -> float:
        return sum(self.by_kind.values()) - self.overlap

    def rows(self, timed_ms: float | None = None) -> list[list[str]]:
        """Table rows that add up to the span; the unprofiled time last, where given."""

        def row(what: str, ms: float, bold: bool = False) -> list[str]:
            value = f"**{ms:.3f}**" if bold else f"{ms:.3f}"
            return [f"**{what}**" if bold else what, value, f"{100 * ms / self.span:.1f}%" if self.span else ""]

        rows = [row(kind, ms) for kind, ms in sorted(self.by_kind.items(), key=lambda kv: -kv[1])]
        if self.overlap > 0:
            rows.append(row("kernels running beside another (counted once)", -self.overlap))
        rows += [
            row(f"kernels ({self.kernels / self.calls:.0f} per call)", self.kernel_time, bold=True),
            row(f"idle gaps up to {SHORT_GAP_US:g} us (hand-over between kernels)", self.short_gaps),
            row(f"idle gaps over {SHORT_GAP_US:g} us (waiting for the host)", self.long_gaps),
            row("span of the profiled calls", self.span, bold=True),
        ]
        if timed_ms is not None:
            rows.append(["the same calls timed without the profiler", f"{timed_ms:.3f}", ""])
        return rows


def account(spans: Sequence[Span], calls: int) -> Accounting:
    """Kernel time by kind, overlap and idle gaps per call, from kernels laid on one time line."""
    if calls < 1:
        raise ValueError(f"calls must be at least 1, got {calls}")
    ordered = sorted(spans, key=lambda s: (s.start, s.end))
    by_kind: dict[str, float] = defaultdict(float)
    by_name: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])  # name -> [launches, us]
    busy = short = long_ = 0.0
    covered_until = None  # end of the union of the kernels seen so far
    for s in ordered:
        by_kind[kind_of(s.name)] += s.end - s.start
        by_name[s.name][0] += 1
        by_name[s.name][1] += s.end - s.start
        if covered_until is None:
            busy += s.end - s.start
            covered_until = s.end
            continue
        gap = s.start - covered_until
        if gap > SHORT_GAP_US:
            long_ += gap
        elif gap > 0:
            short += gap
        if s.end > covered_until:
            busy += s.end - max(s.start, covered_until)
            covered_until = s.end
    total = sum(by_kind.values())
    span = (covered_until - ordered[0].start) if ordered else 0.0
    ms = 1e-3 / calls
    return Accounting(
        calls=calls,
        kernels=len(ordered),
        by_kind={k: v * ms for k, v in by_kind.items()},
        overlap=(total - busy) * ms,
        short_gaps=short * ms,
        long_gaps=long_ * ms,
        span=span * ms,
        by_name=sorted(((n, kind_of(n), c / calls, us * ms) for n, (c, us) in by_name.items()), key=lambda r: -r[3]),
    )


def device_spans(prof: torch.profiler.profile) -> list[Span]:
    """Every kernel, memset and memcpy the profiler saw on the device."""
    from torch.autograd import DeviceType

    spans = []
    for event in prof.events():
        if event.device_type != DeviceType.CPU and event.time_range.end > event.time_range.start:
            spans.append(Span(event.name, float(event.time_range.start), float(event.time_range.end)))
    return spans


@dataclasses.dataclass
class Samples:
    """The GPU's SM clock (MHz) and power draw (W), read while a block ran."""

    clocks: list[int] = dataclasses.field(default_factory=list)
    watts: list[float] = dataclasses.field(default_factory=list)

    def notes(self, label: str, call_ms: float) -> list[str]:
        """Lines for a table's notes; the energy per call is the median draw times the call's time."""
        lines = []
        if self.clocks:
            lines.append(f"SM clock while {label}: {min(self.clocks)}-{max(self.clocks)} MHz, median "
                         f"{statistics.median(self.clocks):.0f} ({len(self.clocks)} readings)")  # fmt: skip
        if self.watts:
            median = statistics.median(self.watts)
            lines.append(f"power while {label}: median {median:.0f} W, max {max(self.watts):.0f} W "
                         f"(about {median * call_ms / 1000:.2f} J a call)")  # fmt: skip
        return lines


def _reader(read: Callable[[torch.device], float], device: torch.device) -> Callable[[torch.device], float] | None:
    try:
        read(device)
    except Exception:  # no pynvml / NVML here, or the GPU does not report it
        return None
    return read


@contextlib.contextmanager
def sm_clocks(device: torch.device, every_s: float = 0.002) -> Iterator[Samples]:
    """SM clock and power readings taken every ``every_s`` while the block runs; none where NVML is missing."""
    samples = Samples()
    clock = _reader(torch.cuda.clock_rate, device)
    power = _reader(torch.cuda.power_draw, device)  # milliwatts
    if clock is None and power is None:
        yield samples
        return
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            if clock is not None:
                samples.clocks.append(int(clock(device)))
            if power is not None:
                samples.watts.append(power(device) / 1000)
            done.wait(every_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join()


@dataclasses.dataclass
class Timeline:
    """A profiled call's accounting, the same calls timed unprofiled, and the GPU's clock and power in both."""

    accounting: Accounting
    timed_ms: float
    while_timed: Samples
    while_profiled: Samples

    def table(self, largest: int = 25) -> str:
        """The accounting, the clocks, then the ``largest`` kernels by time with their kinds."""
        from _common import markdown_table

        text = markdown_table(["where", "ms per call", "share of the span"], self.accounting.rows(self.timed_ms))
        kernels = [[name if len(name) <= 100 else name[:97] + "...", kind, f"{launches:g}", f"{ms:.3f}"]
                   for name, kind, launches, ms in self.accounting.by_name[:largest]]  # fmt: skip
        notes = self.while_timed.notes("timed", self.timed_ms)
        notes += self.while_profiled.notes("profiled", self.accounting.span)
        biggest = markdown_table(["kernel", "kind", "launches per call", "ms per call"], kernels)
        return "\n".join([text, "", *(f"- {n}" for n in notes), "", f"The {len(kernels)} longest kernels:", "",
                          biggest])  # fmt: skip


def profile_calls(fn: Callable[[], object], device: torch.device, calls: int = 10) -> Timeline:
    """``calls`` consecutive calls of ``fn`` timed, then the same number profiled and laid on the time line.

    Both after warm-up calls; the calls queue back to back, as a sampler's steps do.
    """
    from torch.profiler import ProfilerActivity, profile

    if device.type != "cuda":
        raise ValueError("a device time line needs a CUDA device")
    with torch.no_grad():
        for _ in range(3):
            fn()
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with sm_clocks(device) as while_timed:
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            torch.cuda.synchronize(device)
        timed = start.elapsed_time(end) / calls
        with sm_clocks(device) as while_profiled, profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
            torch.cuda.synchronize(device)
    return Timeline(account(device_spans(prof), calls), timed, while_timed, while_profiled)
