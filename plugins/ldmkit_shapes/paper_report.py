"""Tables, the equal-time comparison and the plots of the paper experiment, all from its ``results.json``.

``markdown_report`` is what ``ldmkit paper run`` writes to ``results.md``; ``update_page`` puts the same tables
between the ``<!-- paper:results -->`` markers of a page (docs/paper.md); ``plot`` draws the two figures with
matplotlib (the ``paper`` extra), imported only there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ldmkit.errors import InputError

START, END = "<!-- paper:results:start -->", "<!-- paper:results:end -->"
PLOTS = ("paper-steps.png", "paper-speed.png")


def read_results(path: str | Path) -> dict[str, Any]:
    """A results.json written by ``ldmkit paper run``; InputError if it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable results file ({exc})") from None
    if not isinstance(data, dict) or "experiment" not in data:
        raise InputError(f"{path}: not a results file of 'ldmkit paper run' (no 'experiment')")
    return data


def factors(results: dict[str, Any]) -> list[int]:
    return [int(f) for f in results["experiment"]["factors"]]


def _checkpoints(results: dict[str, Any], f: int) -> dict[int, dict[str, Any]]:
    return {int(r["step"]): r for r in results.get("checkpoints", []) if int(r["f"]) == f}


def _rate(results: dict[str, Any], f: int, key: str) -> float | None:
    value = results.get("throughput", {}).get(str(f), {}).get(key)
    return float(value) if value is not None else None


def equal_time(results: dict[str, Any]) -> dict[str, Any] | None:
    """Every factor's latest checkpoint within the same training time (alone on the device).

    The budget is the time the fastest-training factor needs for all its steps; a factor's time to a step is
    ``step * batch / (its training samples per second)``. None until the throughput phase has run.
    """
    fs = factors(results)
    rates = {f: _rate(results, f, "train_samples_per_s") for f in fs}
    if any(r is None or r <= 0 for r in rates.values()):
        return None
    max_steps = int(results["experiment"]["checkpoints"][-1])
    batch = {f: int(results.get("batch_size", {}).get(str(f)) or 1) for f in fs}
    seconds = {f: max_steps * batch[f] / rates[f] for f in fs}  # type: ignore[operator]
    budget = min(seconds.values())
    rows = {}
    for f in fs:
        reachable = budget * rates[f] / batch[f]  # type: ignore[operator]
        done = [s for s in _checkpoints(results, f) if s <= reachable + 1e-6]
        step = max(done) if done else None
        rows[str(f)] = {
            "steps_in_budget": reachable,
            "checkpoint": step,
            **(_checkpoints(results, f)[step] if step else {}),
        }
    return {"budget_s": budget, "full_run_s": {str(f): s for f, s in seconds.items()}, "rows": rows}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _speed(value: float | None) -> str:
    """Throughputs span 0.1 (tiny CPU runs) to thousands: three significant digits, no exponent."""
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _latent(results: dict[str, Any], f: int) -> str:
    shape = results.get("latent", {}).get(str(f), "?")
    return f"pixels {shape}" if f == 1 else shape


def markdown_report(results: dict[str, Any]) -> str:
    """The experiment's tables as markdown (what is not measured yet shows as '-')."""
    fs = factors(results)
    steps = [int(s) for s in results["experiment"]["checkpoints"]]
    ev = results["experiment"]["evaluation"]
    env = results.get("environment", {})
    where = env.get("gpu") or env.get("cpu") or env.get("device", "?")
    kind = "tiny (CPU smoke run)" if results.get("tiny") else "full"
    head = f"Run: {kind} on {where} (torch {env.get('torch', '?')}), started {results.get('started', '?')}"
    if results.get("total_s") is not None:
        head += (
            f", total {_fmt(results['total_s'], 0)} s (training phase {_fmt(results.get('training_phase_s'), 0)} s,"
            f" exclusive timing phase {_fmt(results.get('throughput_phase_s'), 0)} s)."
        )
    else:
        head += "; it ended before its timing phase (no total time, no speed numbers)."
    lines = [
        head,
        "",
        f"Every evaluation: {ev['samples']} class-conditional pictures (labels 0..17 in turn), {ev['sampler']}"
        f" {ev['steps']} steps, no guidance; Fréchet distance (FD) in the Shapes classifier's features against"
        f" {ev['reference']} held-out real pictures; accuracy = pictures that parse as exactly one object of the"
        " asked class.",
        "",
    ]
    real = results.get("real")
    if real:
        lines += [
            f"Real held-out pictures ({ev['samples']}, the floor): FD {_fmt(real['fd'])}, accuracy"
            f" {_fmt(real['accuracy'])}, classifier accuracy {_fmt(real['classifier_accuracy'])}.",
            "",
        ]
    lines += ["**Quality against training steps** (FD, lower is better / accuracy):", ""]
    lines += ["| f | latent | " + " | ".join(f"step {s}" for s in steps) + " |"]
    lines += ["| --- | --- | " + " | ".join("---" for _ in steps) + " |"]
    for f in fs:
        cps = _checkpoints(results, f)
        cells = [f"{_fmt(cps[s]['fd'], 2)} / {_fmt(cps[s]['accuracy'], 2)}" if s in cps else "-" for s in steps]
        note = f" (stopped at {results['stopped'][str(f)]})" if str(f) in results.get("stopped", {}) else ""
        note += " (failed)" if str(f) in results.get("errors", {}) else ""
        lines.append(f"| {f}{note} | {_latent(results, f)} | " + " | ".join(cells) + " |")
    lines += ["", "**First stages** (reconstructions of the held-out real pictures: the ceiling of each LDM):", ""]
    lines += ["| f | PSNR (dB) | FD | accuracy | training (s, shared device) |", "| --- | --- | --- | --- | --- |"]
    for f in fs:
        ae = results.get("autoencoders", {}).get(str(f))
        if f == 1:
            lines.append("| 1 | identity (exact) | - | - | - |")
        elif ae:
            lines.append(
                f"| {f} | {_fmt(ae['reconstruction_psnr'], 2)} | {_fmt(ae['reconstruction_fd'], 2)} |"
                f" {_fmt(ae['reconstruction_accuracy'], 2)} | {_fmt(ae['train_s'], 0)} |"
            )
        else:
            lines.append(f"| {f} | - | - | - | - |")
    sweep_steps = sorted({int(ev["steps"]), *[int(s) for s in ev.get("steps_sweep", [])]})
    if results.get("throughput"):
        lines += _speed_table(results, fs, steps, sweep_steps)
    lines += _tail(results, fs)
    return "\n".join(lines) + "\n"


def _speed_table(results: dict[str, Any], fs: list[int], steps: list[int], sweep_steps: list[int]) -> list[str]:
    ev = results["experiment"]["evaluation"]
    lines = ["", "**Speed, alone on the device**, and the final checkpoint's quality per sampling step count:", ""]
    head = "| f | training samples/s | " + " | ".join(f"{s} steps: pictures/s, FD" for s in sweep_steps) + " |"
    lines += [head, "| --- | --- | " + " | ".join("---" for _ in sweep_steps) + " |"]
    final = steps[-1]
    for f in fs:
        quality = {int(r["sampling_steps"]): r for r in results.get("sweep", []) if int(r["f"]) == f}
        cp = _checkpoints(results, f).get(final)
        if cp is not None:
            quality[int(ev["steps"])] = cp
        cells = []
        for s in sweep_steps:
            rate = _rate(results, f, f"sample_pictures_per_s@{s}")
            cells.append(f"{_speed(rate)}, {_fmt(quality[s]['fd'], 2) if s in quality else '-'}")
        lines.append(f"| {f} | {_speed(_rate(results, f, 'train_samples_per_s'))} | " + " | ".join(cells) + " |")
    return lines


def _tail(results: dict[str, Any], fs: list[int]) -> list[str]:
    lines: list[str] = []
    eq = equal_time(results)
    if eq is not None:
        lines += [
            "",
            f"**At equal training time** ({_fmt(eq['budget_s'], 1)} s alone on the device: the time the fastest"
            " factor needs for all its steps):",
            "",
            "| f | steps in that time | latest checkpoint | FD | accuracy |",
            "| --- | --- | --- | --- | --- |",
        ]
        for f in fs:
            r = eq["rows"][str(f)]
            lines.append(
                f"| {f} | {int(r['steps_in_budget'])} | {_fmt(r['checkpoint'])} | {_fmt(r.get('fd'), 2)} |"
                f" {_fmt(r.get('accuracy'), 2)} |"
            )
    checks = claim_checks(results)
    if checks:
        lines += ["", "**Checks per claim**, computed from the numbers above (the verdicts weigh them):", ""]
        lines += [f"{n}. {text}" for n, text in checks]
    if results.get("errors"):
        lines += ["", "Failed: " + "; ".join(f"f={f}: {m}" for f, m in results["errors"].items())]
    return lines


def claim_checks(results: dict[str, Any]) -> list[tuple[int, str]]:
    """One line of evidence per claim of the paper (numbered as on docs/paper.md), where the data allow it."""
    fs = factors(results)
    cps = {f: _checkpoints(results, f) for f in fs}
    out: list[tuple[int, str]] = []
    moderate = [f for f in fs if 4 <= f <= 16 and f != max(fs)] or [f for f in fs if f > 1]
    common = [s for s in sorted(cps.get(1, {})) if all(s in cps[f] for f in moderate)]
    if 1 in fs and moderate and common:
        worse = [s for s in common if cps[1][s]["fd"] > min(cps[f][s]["fd"] for f in moderate)]
        lower = [s for s in common if cps[1][s]["accuracy"] < max(cps[f][s]["accuracy"] for f in moderate)]
        out.append(
            (
                1,
                f"f=1 has a higher FD than the best of f={', '.join(map(str, moderate))} at {len(worse)} of"
                f" {len(common)} checkpoints, and a lower accuracy at {len(lower)} of {len(common)}.",
            )
        )
    big = max(fs)
    ref = 4 if 4 in fs else None
    if big > 1 and ref is not None and ref != big and len(cps[big]) >= 2 and len(cps[ref]) >= 2:

        def change(f: int) -> float:
            (_, a), (_, b) = sorted(cps[f].items())[-2:]
            return b["fd"] / a["fd"] - 1.0 if a["fd"] > 0 else 0.0

        ae_big = results.get("autoencoders", {}).get(str(big), {}).get("reconstruction_fd")
        ae_ref = results.get("autoencoders", {}).get(str(ref), {}).get("reconstruction_fd")
        last_big, last_ref = sorted(cps[big].items())[-1][1], sorted(cps[ref].items())[-1][1]
        out.append(
            (
                2,
                f"over the last checkpoint interval the FD of f={big} changed by {change(big):+.0%}, that of f={ref} by"
                f" {change(ref):+.0%}; final FD f={big} {last_big['fd']:.2f} against f={ref} {last_ref['fd']:.2f};"
                f" its autoencoder's reconstructions alone score FD {_fmt(ae_big, 2)} (f={ref}: {_fmt(ae_ref, 2)}).",
            )
        )
    eq = equal_time(results)
    if eq is not None:
        scored = {int(f): r for f, r in eq["rows"].items() if r.get("fd") is not None}
        if scored:
            best = min(scored, key=lambda f: scored[f]["fd"])
            order = ", ".join(f"f={f} {scored[f]['fd']:.2f}" for f in sorted(scored, key=lambda f: scored[f]["fd"]))
            missing = [f for f in fs if f not in scored]
            note = f" (no checkpoint within the budget yet: f={', '.join(map(str, missing))})" if missing else ""
            out.append((3, f"at equal training time the best FD is f={best}'s; in order: {order}{note}."))
    steps = int(results["experiment"]["evaluation"]["steps"])
    rates = {f: _rate(results, f, f"sample_pictures_per_s@{steps}") for f in fs}
    if all(r is not None for r in rates.values()):
        seq = ", ".join(f"f={f} {_speed(rates[f])}" for f in fs)
        rising = all(rates[a] <= rates[b] for a, b in zip(fs, fs[1:], strict=False))  # type: ignore[operator]
        out.append(
            (
                4,
                f"pictures/s at {steps} DDIM steps: {seq} ({'rising' if rising else 'not rising'} with f all the way).",
            )
        )
    return out


def classifier_note(path: str | Path | None = None) -> str:
    """One paragraph on a classifier weights file (default: the shipped one), from its metadata."""
    from ldmkit.checkpoints import safetensors_metadata
    from ldmkit_shapes.classifier import weights_path

    meta = safetensors_metadata(path if path is not None else weights_path())
    return (
        f"Held-out accuracy of the classifier: {float(meta.get('test_accuracy', 'nan')):.3f} on"
        f" {meta.get('test_pictures', '?')} pictures (seed {meta.get('test_seed', '?')}), mean box error"
        f" {meta.get('test_box_mae_pixels', '?')} px; trained on {meta.get('train_pictures', '?')} pictures for"
        f" {meta.get('epochs', '?')} epochs on the {meta.get('device', 'cpu')}.\n\n"
        "Its Fréchet distance for held-out real pictures and for the same pictures deliberately degraded, in the"
        " experiment's setting (`ldmkit paper metric`):\n\n"
    )


def sanity_table(rows: list[tuple[str, dict[str, float]]], samples: int, reference: int) -> str:
    """The metric's sanity rows (:func:`ldmkit_shapes.paper_eval.metric_sanity`) as a markdown table."""
    lines = [
        f"| {samples} pictures | FD against {reference} real | accuracy (parser) | classifier accuracy |",
        "| --- | --- | --- | --- |",
    ]
    for name, r in rows:
        acc, cls = _fmt(r["accuracy"], 3), _fmt(r["classifier_accuracy"], 3)
        lines.append(f"| {name} | {_fmt(r['fd'], 2)} | {acc} | {cls} |")
    return "\n".join(lines) + "\n"


def fill_markers(page: str | Path, name: str, body: str) -> None:
    """Replace the text between ``<!-- paper:NAME:start -->`` and ``<!-- paper:NAME:end -->`` of a page."""
    page = Path(page)
    start, end = f"<!-- paper:{name}:start -->", f"<!-- paper:{name}:end -->"
    try:
        text = page.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{page}: cannot read ({exc.strerror or exc})") from None
    head, sep, rest = text.partition(start)
    _, sep2, tail = rest.partition(end)
    if not sep or not sep2:
        raise InputError(f"{page}: no {start} ... {end} markers to fill")
    page.write_text(f"{head}{start}\n\n{body}\n{end}{tail}", encoding="utf-8")


def update_page(page: str | Path, results: dict[str, Any]) -> None:
    """Replace the text between the page's result markers with :func:`markdown_report`."""
    fill_markers(page, "results", markdown_report(results))


def _colour(fs: list[int], f: int) -> str:
    """The same colour for a factor in every figure (matplotlib's default cycle, by the factor's place)."""
    return f"C{fs.index(f) % 10}"


def plot(results: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """``paper-steps.png`` (FD and accuracy against training steps, one line per f) and ``paper-speed.png``
    (FD of the final checkpoint against sampling pictures/s, one point per DDIM step count; only when the run
    measured throughput). Returns the files written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FormatStrFormatter
    except ImportError:
        raise InputError("plotting needs matplotlib: pip install 'ldmkit[paper]'") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fs = factors(results)
    ev = results["experiment"]["evaluation"]
    fig, (ax_fd, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for f in fs:
        cps = sorted(_checkpoints(results, f).items())
        if not cps:
            continue
        label = "f=1 (pixels)" if f == 1 else f"f={f}"
        style = {"marker": "o", "label": label, "color": _colour(fs, f)}
        ax_fd.plot([s for s, _ in cps], [r["fd"] for _, r in cps], **style)
        ax_acc.plot([s for s, _ in cps], [r["accuracy"] for _, r in cps], **style)
    steps = [int(s) for s in results["experiment"]["checkpoints"]]
    plain = FormatStrFormatter("%g")  # 250, not 2.5 x 10^2
    for ax, name in ((ax_fd, "Fréchet distance (lower is better)"), (ax_acc, "class accuracy (parser)")):
        ax.set_xscale("log")
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.minorticks_off()
        ax.set_xlabel("training steps")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    ax_fd.set_yscale("log")
    ax_fd.yaxis.set_major_formatter(plain)
    ax_fd.yaxis.set_minor_formatter(plain)
    ax_acc.legend()
    fig.suptitle(f"Quality against training steps ({ev['sampler']} {ev['steps']} steps)")
    fig.tight_layout()
    steps_png = out_dir / PLOTS[0]
    fig.savefig(steps_png, dpi=110)
    plt.close(fig)

    if not results.get("throughput"):
        return [steps_png]  # no timing phase in this run: nothing to put on the speed axis
    fig, ax = plt.subplots(figsize=(6, 4))
    final = int(results["experiment"]["checkpoints"][-1])
    for f in fs:
        points = []
        quality = {int(r["sampling_steps"]): r["fd"] for r in results.get("sweep", []) if int(r["f"]) == f}
        cp = _checkpoints(results, f).get(final)
        if cp is not None:
            quality[int(ev["steps"])] = cp["fd"]
        for s, fd in sorted(quality.items()):
            rate = _rate(results, f, f"sample_pictures_per_s@{s}")
            if rate is not None:
                points.append((rate, fd, s))
        if points:
            label = "f=1 (pixels)" if f == 1 else f"f={f}"
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label, color=_colour(fs, f))
            for rate, fd, s in points:
                ax.annotate(str(s), (rate, fd), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(plain)
    ax.set_xlabel("sampling throughput (pictures/s, decoding included)")
    ax.set_ylabel("Fréchet distance (lower is better)")
    ax.set_title(f"Final checkpoint (step {final}); labels: DDIM steps")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    speed_png = out_dir / PLOTS[1]
    fig.savefig(speed_png, dpi=110)
    plt.close(fig)
    return [steps_png, speed_png]


__all__ = [
    "END",
    "PLOTS",
    "START",
    "equal_time",
    "claim_checks",
    "classifier_note",
    "fill_markers",
    "markdown_report",
    "plot",
    "read_results",
    "sanity_table",
    "update_page",
]
