"""A small line/scatter plot helper on Pillow's ImageDraw (no matplotlib), and the search plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#7f7f7f")


@dataclass
class Series:
    """``style``: ``line``, ``step`` (a best-so-far staircase), ``points`` or ``hline`` (``ys[0]`` across)."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str = PALETTE[0]
    style: str = "line"
    width: int = 2


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.1e}"
    return f"{v:.4g}"


def line_plot(
    series: Sequence[Series],
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    size: tuple[int, int] = (720, 440),
    logx: bool = False,
) -> Image.Image:
    """Draw ``series`` on shared axes with ticks, labels and a legend; returns an RGB image."""
    w, h = size
    left, right, top, bottom = 70, 20, 34, 52
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    pts = [
        (x, y)
        for s in series
        for x, y in zip(s.xs, s.ys)
        if math.isfinite(x) and math.isfinite(y) and (x > 0 or not logx)
    ]
    if not pts:
        d.text((left, h // 2), "no data", fill="black")
        return img

    def tx(x: float) -> float:
        return math.log10(x) if logx else x

    xs = [tx(p[0]) for p in pts]
    ys = [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 <= x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 <= y0:
        y0, y1 = y0 - abs(y0) * 0.1 - 1e-9, y1 + abs(y1) * 0.1 + 1e-9
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad
    pw, ph = w - left - right, h - top - bottom

    def px(x: float) -> float:
        return left + (tx(x) - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + (y1 - y) / (y1 - y0) * ph

    d.rectangle([left, top, left + pw, top + ph], outline="black")
    for yv in _nice_ticks(y0, y1):
        yy = py(yv)
        d.line([left - 4, yy, left, yy], fill="black")
        d.line([left + 1, yy, left + pw - 1, yy], fill="#eeeeee")
        d.text((4, yy - 6), _fmt(yv), fill="black")
    if logx:
        xt = [10**e for e in range(math.floor(x0), math.ceil(x1) + 1) if x0 <= e <= x1] or [10**x0]
    else:
        xt = _nice_ticks(x0, x1)
    for xv in xt:
        xx = px(xv)
        d.line([xx, top + ph, xx, top + ph + 4], fill="black")
        d.text((xx - 12, top + ph + 8), _fmt(xv), fill="black")
    d.text((left, 8), title, fill="black")
    d.text((left + pw // 2 - 3 * len(xlabel), h - 20), xlabel, fill="black")
    d.text((4, top - 16), ylabel, fill="black")
    for s in series:
        data = [
            (x, y)
            for x, y in zip(s.xs, s.ys)
            if math.isfinite(x) and math.isfinite(y) and (x > 0 or not logx)
        ]
        if not data:
            continue
        if s.style == "points":
            for x, y in data:
                cx, cy = px(x), py(y)
                d.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=s.color)
        elif s.style == "hline":
            yy = py(data[0][1])
            for xx in range(left, left + pw, 8):
                d.line([xx, yy, min(xx + 4, left + pw), yy], fill=s.color, width=s.width)
        else:
            line: list[tuple[float, float]] = []
            for i, (x, y) in enumerate(data):
                if s.style == "step" and i > 0:
                    line.append((px(x), py(data[i - 1][1])))
                line.append((px(x), py(y)))
            if len(line) == 1:
                cx, cy = line[0]
                d.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=s.color)
            else:
                d.line(line, fill=s.color, width=s.width)
    ly = top + 6
    for s in series:
        lx = left + pw - 190
        d.line([lx, ly + 6, lx + 20, ly + 6], fill=s.color, width=3)
        d.text((lx + 26, ly), s.label, fill="black")
        ly += 15
    return img


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
    panel, its low-fidelity measurements (distance to the float model's samples)."""
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
    img = line_plot(
        series,
        title=f"{report['method']} search: fitness vs images sampled ({n} samples per full evaluation)",
        xlabel="images sampled",
        ylabel="fitness (lower is better)",
    )
    lofi = stage_series(history, "fidelity", "distance to float samples")
    if lofi:
        low = line_plot(
            lofi,
            title="low-fidelity rounds: Frechet distance to the float model's samples (paired noise)",
            xlabel="images sampled",
            ylabel="FD to float",
        )
        both = Image.new("RGB", (img.width, img.height + low.height), "white")
        both.paste(img, (0, 0))
        both.paste(low, (0, img.height))
        img = both
    if path is not None:
        from qdit.io.atomic import atomic_path

        with atomic_path(path, ".png") as tmp:
            img.save(tmp, format="PNG")
    return img
