"""Line and scatter plots on matplotlib (Agg, off-screen), and the search plot (``qdit search --plot``).

matplotlib is imported when a plot is drawn, never when qdit is imported, and only through its
object-oriented API (a :class:`~matplotlib.figure.Figure` on an Agg canvas): no pyplot, no global
backend switch, nothing left behind in the caller's matplotlib state. A plot comes back as a Pillow
image, so callers save or paste it as before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#7f7f7f")
DPI = 100  # figure inches x DPI = the image's pixels


@dataclass
class Series:
    """``style``: ``line``, ``step`` (a best-so-far staircase), ``points`` or ``hline`` (``ys[0]`` across)."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str = PALETTE[0]
    style: str = "line"
    width: int = 2


def _finite(s: Series, logx: bool) -> tuple[list[float], list[float]]:
    """The points of ``s`` that can be drawn (finite, and positive x on a log axis)."""
    pts = [(x, y) for x, y in zip(s.xs, s.ys) if math.isfinite(x) and math.isfinite(y) and (x > 0 or not logx)]
    return [float(x) for x, _ in pts], [float(y) for _, y in pts]


def _draw(ax: Axes, series: Sequence[Series], title: str, xlabel: str, ylabel: str, logx: bool) -> None:
    drawn = 0
    for s in series:
        xs, ys = _finite(s, logx)
        if not xs:
            continue
        drawn += 1
        if s.style == "points":
            ax.scatter(xs, ys, s=10, color=s.color, label=s.label, linewidths=0, zorder=2)
        elif s.style == "hline":
            ax.axhline(ys[0], color=s.color, linestyle="--", linewidth=s.width, label=s.label, zorder=3)
        else:
            marker = "o" if len(xs) == 1 else None  # a one-point line would be invisible
            where = {"where": "post"} if s.style == "step" else {}
            draw = ax.step if s.style == "step" else ax.plot
            draw(xs, ys, color=s.color, linewidth=s.width, label=s.label, marker=marker, zorder=3, **where)
    if logx:
        ax.set_xscale("log")
    if not drawn:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title, loc="left", fontsize=9)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(True, color="#e8e8e8", linewidth=0.8)
    ax.set_axisbelow(True)
    if drawn:
        ax.legend(fontsize=8, loc="best", framealpha=0.9)


def _figure(size: tuple[int, int], panels: int = 1) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure

    w, h = size
    fig = Figure(figsize=(w / DPI, h * panels / DPI), dpi=DPI, layout="constrained")
    axes = fig.subplots(panels, 1, squeeze=False)[:, 0]
    return fig, list(axes)


def _image(fig: Figure, size: tuple[int, int]) -> Image.Image:
    """The figure rendered by Agg, as an RGB image of exactly ``size`` pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba: Any = canvas.buffer_rgba()
    img = Image.frombuffer("RGBA", canvas.get_width_height(), rgba, "raw", "RGBA", 0, 1).convert("RGB")
    return img if img.size == size else img.resize(size, Image.LANCZOS)  # a pixel lost to float rounding


def line_plot(
    series: Sequence[Series],
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    size: tuple[int, int] = (720, 440),
    logx: bool = False,
) -> Image.Image:
    """Draw ``series`` on shared axes with ticks, labels and a legend; returns an RGB image of ``size``."""
    fig, (ax,) = _figure(size)
    _draw(ax, series, title, xlabel, ylabel, logx)
    return _image(fig, size)


def best_so_far(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    """The running minimum of ``ys``, at the points where it improves (plus the last x)."""
    bx: list[float] = []
    by: list[float] = []
    best = math.inf
    for x, y in zip(xs, ys):
        if y < best:
            best = y
            bx.append(x)
            by.append(y)
    if bx and xs and bx[-1] != xs[-1]:
        bx.append(xs[-1])
        by.append(best)
    return bx, by


def search_series(
    history: Sequence[dict],
    num_samples: int,
    label: str,
    color: str,
    points: bool = True,
    forwards_per_image: int | None = None,
) -> list[Series]:
    """Series of one search's history: its fitness evaluations with all samples, and the best so far,
    against images sampled (or, with ``forwards_per_image``, image-equivalents: model forwards over
    the forwards of one image, which also counts the cheap search's sensitivity passes)."""
    xs, ys = [], []
    for h in history:
        if h["kind"] != "fit" or h["value"] is None or h["n"] != num_samples:
            continue
        xs.append(float(h["images"] if forwards_per_image is None else h["forwards"] / forwards_per_image))
        ys.append(float(h["value"]))
    out = []
    if points:
        out.append(Series(f"{label}: evaluations", xs, ys, "#bbbbbb", "points"))
    bx, by = best_so_far(xs, ys)
    out.append(Series(f"{label}: best so far", bx, by, color, "step"))
    return out


def stage_series(history: Sequence[dict], kind: str, label: str) -> list[Series]:
    """One point series per sample count of the ``kind`` measurements (plus the running best of each)."""
    by_n: dict[int, tuple[list[float], list[float]]] = {}
    for h in history:
        if h["kind"] == kind and h["value"] is not None:
            xs, ys = by_n.setdefault(int(h["n"]), ([], []))
            xs.append(float(h["images"]))
            ys.append(float(h["value"]))
    out = []
    for i, (n, (xs, ys)) in enumerate(sorted(by_n.items())):
        color = PALETTE[(i + 2) % len(PALETTE)]
        out.append(Series(f"{label}, {n} samples", xs, ys, color, "points"))
        bx, by = best_so_far(xs, ys)
        out.append(Series(f"best, {n} samples", bx, by, color, "step", width=1))
    return out


def search_plot(report: dict, path: str | Path | None = None) -> Image.Image:
    """Fitness against images sampled for one search report (``qdit search --plot``).

    The top panel shows the fitness measured with all samples (every evaluation and the best so far)
    and the uniform baseline; a cheap search adds its measurements with fewer samples and, in a second
    panel below, its low-fidelity measurements (distance to the float model's samples). Each panel is
    720 x 440 pixels."""
    n = int(report["num_samples"])
    history = report["history"]
    series = search_series(history, n, str(report["method"]), PALETTE[0])
    if report["method"] != "full":
        series = [
            s for s in stage_series(history, "fit", "fitness") if not s.label.endswith(f" {n} samples")
        ] + series
    if report.get("baseline_fitness") is not None:
        series.append(
            Series(
                f"uniform g{report['baseline_group_size']}",
                [1.0],
                [report["baseline_fitness"]],
                PALETTE[1],
                "hline",
            )
        )
    lofi = stage_series(history, "fidelity", "distance to float samples")
    panel = (720, 440)
    fig, axes = _figure(panel, 2 if lofi else 1)
    _draw(
        axes[0],
        series,
        f"{report['method']} search: fitness vs images sampled ({n} samples per full evaluation)",
        "images sampled",
        "fitness (lower is better)",
        False,
    )
    if lofi:
        _draw(
            axes[1],
            lofi,
            "low-fidelity rounds: Fréchet distance to the float model's samples (paired noise)",
            "images sampled",
            "FD to float",
            False,
        )
    img = _image(fig, (panel[0], panel[1] * len(axes)))
    if path is not None:
        from qdit.io.atomic import atomic_path

        with atomic_path(path, ".png") as tmp:
            img.save(tmp, format="PNG")
    return img
