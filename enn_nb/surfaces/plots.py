"""Matplotlib figures of an export: parity error, latency against eager, artifact size (data in, Figure out)."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from enn_nb._format import human_size

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Errors of exactly 0 (PT2, AOTI) cannot sit on a log axis; they are drawn at this floor and labelled.
_ERROR_FLOOR = 1e-12
# A case that could not be compared (another output shape) is recorded as 1e308: drawn capped, labelled.
_ERROR_CAP = 1e3
_FIGSIZE = (6.0, 3.2)
EAGER = "eager (torch)"
EAGER_SAFE = "eager, export-safe"


def _figure(height: float = _FIGSIZE[1]) -> Figure:
    # A bare Figure (not pyplot): no global state, nothing shown twice, safe from any thread.
    from matplotlib.figure import Figure

    return Figure(figsize=(_FIGSIZE[0], height), layout="constrained")


def _empty(fig: Figure, title: str, text: str) -> Figure:
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_axis_off()
    return fig


def parity_figure(
    errors: Mapping[str, Mapping[int, float | None]],
    *,
    tolerances: Mapping[str, float] | None = None,
    title: str = "Parity: max abs error vs eager",
) -> Figure:
    """Grouped bars of the max absolute error per backend (groups) and batch size (bars), log scale.

    Args:
        errors: ``{backend: {batch_size: max_abs_err}}``; ``None`` or NaN (not measured) is skipped,
            an error of exactly 0 is drawn at a floor and labelled ``0``.
        tolerances: ``{backend: atol}``, drawn as a short dashed line over the backend's group.
        title: the axes title.
    """
    fig = _figure()
    measured = {
        name: {int(b): float(e) for b, e in per.items() if e is not None and not math.isnan(float(e))}
        for name, per in errors.items()
    }
    measured = {name: per for name, per in measured.items() if per}
    if not measured:
        return _empty(fig, title, "no parity measured")
    batches = sorted({b for per in measured.values() for b in per})
    names = list(measured)
    # wide enough that the backend names under the groups never collide; slanted beyond five groups
    fig.set_size_inches(max(_FIGSIZE[0], 1.0 + 0.95 * len(names) + 1.2), _FIGSIZE[1] + (0.4 if len(names) > 5 else 0))
    ax = fig.add_subplot()
    width = 0.8 / len(batches)
    cmap = _colors(len(batches))
    for j, batch in enumerate(batches):
        xs, ys, marks = [], [], []
        for i, name in enumerate(names):
            if batch in measured[name]:
                value = measured[name][batch]
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(min(max(value, _ERROR_FLOOR), _ERROR_CAP))
                marks.append("0" if value == 0.0 else ("n/c" if value > _ERROR_CAP else ""))
        bars = ax.bar(xs, ys, width=width * 0.95, color=cmap[j], label=f"batch {batch}")
        for bar, mark in zip(bars, marks):
            if mark == "0":
                ax.annotate("0", (bar.get_x() + bar.get_width() / 2, _ERROR_FLOOR), ha="center",
                            va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
            elif mark:  # not comparable: the artifact gave another shape; drawn at the cap, inside the frame
                ax.annotate(mark, (bar.get_x() + bar.get_width() / 2, _ERROR_CAP), ha="center",
                            va="top", fontsize=6, xytext=(0, -2), textcoords="offset points", rotation=90)
    labelled = False
    for i, name in enumerate(names):
        atol = (tolerances or {}).get(name)
        if atol:
            ax.hlines(atol, i - 0.45, i + 0.45, colors="crimson", linestyles="dashed", linewidth=1,
                      label=None if labelled else "atol")
            labelled = True
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, rotation=30 if len(names) > 5 else 0,
                  ha="right" if len(names) > 5 else "center")
    ax.set_ylabel("max |artifact - eager|")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return fig


def latency_figure(
    latency_ms: Mapping[str, float | None],
    *,
    eager_ms: float | None = None,
    safe_ms: float | None = None,
    batch_size: int | None = None,
    batches: Mapping[str, int] | None = None,
    title: str = "Latency per runtime vs eager",
) -> Figure:
    """Horizontal bars of the latency per runtime, eager PyTorch first, labelled with the speed-up.

    The one ratio convention (:mod:`enn_nb.engine.timing`): reference ms / runtime ms, above 1x the
    runtime is faster; the reference is export-safe eager when given (the same computation), else eager.

    Args:
        latency_ms: ``{backend: milliseconds per call}``; ``None`` (not measured) is skipped.
        eager_ms: the eager model on the same input (fast paths on), drawn first in grey.
        safe_ms: the eager model inside ``export_safe`` (what was exported), drawn second in grey; the
            ratios are to it (to ``eager_ms`` when it is None).
        batch_size: the batch everything was timed at, shown in the axis label.
        batches: ``{backend: batch}`` where a runtime was timed at another batch (a static
            artifact): its label says so and no ratio to eager is given.
        title: the axes title.
    """
    values = {k: float(v) for k, v in latency_ms.items() if v is not None and not math.isnan(float(v))}
    fig = _figure(max(2.0, 0.6 + 0.38 * (len(values) + 2)))
    if not values and eager_ms is None:
        return _empty(fig, title, "no latency measured")
    labels: list[str] = []
    data: list[float] = []
    colors: list = []
    comparable: list[bool] = []
    for label, ms, grey in ((EAGER, eager_ms, "0.55"), (EAGER_SAFE, safe_ms, "0.75")):
        if ms is not None:
            labels.append(label)
            data.append(float(ms))
            colors.append(grey)
            comparable.append(True)
    palette = _colors(max(len(values), 1))
    for i, (name, ms) in enumerate(values.items()):
        other = (batches or {}).get(name)
        same = other is None or batch_size is None or other == batch_size
        labels.append(name if same else f"{name} (batch {other})")
        data.append(ms)
        colors.append(palette[i])
        comparable.append(same)
    ax = fig.add_subplot()
    ys = list(range(len(labels)))[::-1]
    bars = ax.barh(ys, data, color=colors)
    from enn_nb.engine.timing import ratio_text, speedup

    reference, name, own = (safe_ms, "export-safe eager", EAGER_SAFE) if safe_ms else (eager_ms, "eager", EAGER)
    ax.set_yticks(ys, labels)
    ax.set_xlabel("ms per call" + (f" (batch {batch_size})" if batch_size else "") + f"; ×: speed-up vs {name}")
    positive = [d for d in data if d > 0]
    log = bool(positive) and max(positive) / min(positive) > 30  # e.g. 0.1 ms vs 100 ms: linear hides the small
    if log:
        low, high = min(positive) / 2, max(positive) * 4
        ax.set_xscale("log")
    else:
        low, high = 0.0, max(data) * 1.15 if max(data) > 0 else 1.0
    ax.set_xlim(low, high)
    for bar, ms, label, same in zip(bars, data, labels, comparable):
        text = f"{ms:.3g} ms"
        ratio = speedup(reference, ms)
        if ratio and same and label != own:
            text += f" ({ratio_text(ratio).replace('x', '×')})"
        # a label that would cross the frame sits inside its bar instead
        end = (math.log(ms / low) / math.log(high / low)) if log and ms > 0 else (ms - low) / (high - low)
        inside = end > 0.6
        ax.annotate(text, (ms, bar.get_y() + bar.get_height() / 2), va="center", fontsize=7,
                    ha="right" if inside else "left", xytext=(-3 if inside else 3, 0), textcoords="offset points",
                    color="white" if inside else "black", clip_on=True)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return fig


def size_figure(sizes: Mapping[str, int | None], *, title: str = "Artifact size") -> Figure:
    """Horizontal bars of each artifact's size on disk (all of its files), labelled in KiB/MiB.

    Args:
        sizes: ``{backend: bytes}``; ``None`` (no artifact) is skipped.
        title: the axes title.
    """
    values = {k: int(v) for k, v in sizes.items() if v is not None}
    fig = _figure(max(2.0, 0.5 + 0.38 * len(values)))
    if not values:
        return _empty(fig, title, "no artifact written")
    ax = fig.add_subplot()
    names = list(values)
    ys = list(range(len(names)))[::-1]
    kib = [values[n] / 1024 for n in names]
    bars = ax.barh(ys, kib, color=_colors(len(names)))
    for bar, name in zip(bars, names):
        ax.annotate(human_size(values[name]), (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                    va="center", fontsize=7, xytext=(3, 0), textcoords="offset points")
    ax.set_yticks(ys, names)
    ax.set_xlabel("KiB")
    ax.set_xlim(0, max(kib) * 1.3 if max(kib) > 0 else 1)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return fig


def quantization_figure(rows: list[Mapping[str, object]], *, x: str = "size_ratio",
                        title: str = "Quantization: size vs accuracy change") -> Figure:
    """One point per quantized artifact: ``x`` (``size_ratio`` or ``latency_ratio``, against the float
    artifact of the same backend) against its worst output's RMSE / std, labelled ``backend mode``.

    Args:
        rows: ``enn_nb.engine.quantize.table.rows(results, latency)``.
        x: which ratio is the horizontal axis.
        title: the axes title.
    """
    fig = _figure()
    points = [r for r in rows if r.get(x) is not None and r.get("rmse_rel") is not None]
    if not points:
        return _empty(fig, title, "no quantized artifact with a measured accuracy")
    ax = fig.add_subplot()
    backends = sorted({str(r["backend"]) for r in points})
    cmap = _colors(len(backends))
    for i, backend in enumerate(backends):
        mine = [r for r in points if r["backend"] == backend]
        ax.scatter([float(r[x]) for r in mine], [float(r["rmse_rel"]) * 100 for r in mine],  # type: ignore[arg-type]
                   color=cmap[i], label=backend, zorder=3)
        for r in mine:
            ax.annotate(str(r["mode"]), (float(r[x]), float(r["rmse_rel"]) * 100), fontsize=7,  # type: ignore[arg-type]
                        xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel(("size" if x == "size_ratio" else "latency") + " / float artifact of the same backend")
    ax.set_ylabel("RMSE / float std (%), worst output")
    ax.set_title(title)
    ax.grid(True, alpha=0.3, zorder=0)
    ax.legend(fontsize=7)
    return fig


def to_png(fig: Figure, *, dpi: int = 100) -> bytes:
    """The figure rendered as PNG bytes (Agg, no display needed)."""

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]
