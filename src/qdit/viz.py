"""Pictures: image grids, clip frame grids and animated GIFs, side-by-side comparisons (Pillow only)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw


def image_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2, scale: int = 1) -> Image.Image:
    """uint8 ``[N, H, W, C]`` (C = 1 or 3) to one grid image, ``nrow`` images per row."""
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 [N, H, W, C] images, got {images.dtype} {images.shape}")
    n, h, w, c = images.shape
    nrow = nrow or max(1, int(np.ceil(np.sqrt(n))))
    rows = max(1, int(np.ceil(n / nrow)))
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        canvas[y : y + h, x : x + w] = images[i]
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas, mode="L" if c == 1 else "RGB")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def _check_clips(clips: np.ndarray) -> np.ndarray:
    if clips.ndim != 5 or clips.dtype != np.uint8 or clips.shape[-1] not in (1, 3):
        raise ValueError(
            f"expected uint8 [N, T, H, W, C] clips (C = 1 or 3), got {clips.dtype} {clips.shape}"
        )
    return clips


def clip_frame_grid(clips: np.ndarray, pad: int = 2, scale: int = 1) -> Image.Image:
    """uint8 clips ``[N, T, H, W, C]`` to one image: a row per clip, its ``T`` frames left to right."""
    n, t, h, w, c = _check_clips(clips).shape
    return image_grid(clips.reshape(n * t, h, w, c), nrow=t, pad=pad, scale=scale)


def clip_grid_frames(clips: np.ndarray, nrow: int = 10, pad: int = 2, scale: int = 1) -> list[Image.Image]:
    """uint8 clips ``[N, T, H, W, C]`` to ``T`` grid images: frame ``t`` shows frame ``t`` of every clip,
    up to ``nrow`` clips per row (fewer when there are fewer clips, so no empty column)."""
    n, t = _check_clips(clips).shape[:2]
    per_row = max(1, min(nrow, n))
    return [
        image_grid(np.ascontiguousarray(clips[:, k]), nrow=per_row, pad=pad, scale=scale) for k in range(t)
    ]


def save_gif(frames: Sequence[Image.Image], path: str | os.PathLike, frame_ms: int = 125) -> None:
    """An animated GIF of ``frames``, looping forever, ``frame_ms`` per frame. (The GIF writer merges a
    frame identical to the one before into it, so a clip that stands still has fewer stored frames.)"""
    if not frames:
        raise ValueError("a GIF needs at least one frame")
    first, *rest = frames
    first.save(path, format="GIF", save_all=True, append_images=rest, duration=frame_ms, loop=0)


def side_by_side(
    grids: Sequence[Image.Image], titles: Sequence[str], gap: int = 10, title_h: int = 16
) -> Image.Image:
    """Grids next to each other, each with a title above it."""
    grids = [g.convert("RGB") for g in grids]
    width = sum(g.width for g in grids) + gap * (len(grids) + 1)
    height = max(g.height for g in grids) + title_h + 2 * gap
    out = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(out)
    x = gap
    for g, title in zip(grids, titles):
        draw.text((x, gap // 2), title, fill="black")
        out.paste(g, (x, gap + title_h))
        x += g.width + gap
    return out


def line_plot(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    size: tuple[int, int] = (640, 400),
    log_y: bool = False,
) -> Image.Image:
    """A small line plot (one polyline per named series) with axes, ticks and a legend."""
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"]
    w, h = size
    left, right, top, bottom = 64, 16, 28, 44
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    xs = [float(x) for xv, _ in series.values() for x in xv]
    ys = [float(y) for _, yv in series.values() for y in yv]
    if not xs:
        return img
    fy = (lambda v: float(np.log10(max(v, 1e-12)))) if log_y else float
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(map(fy, ys)), max(map(fy, ys))
    x1 = x1 if x1 > x0 else x0 + 1
    y1 = y1 if y1 > y0 else y0 + 1

    def px(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x0) / (x1 - x0) * (w - left - right),
            h - bottom - (fy(y) - y0) / (y1 - y0) * (h - top - bottom),
        )

    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for k in range(5):
        xv = x0 + (x1 - x0) * k / 4
        yv = y0 + (y1 - y0) * k / 4
        gx, _ = px(xv, 10**y0 if log_y else y0)
        gy = h - bottom - k / 4 * (h - top - bottom)
        draw.line([gx, h - bottom, gx, h - bottom + 4], fill="black")
        draw.text((gx - 12, h - bottom + 6), f"{xv:.4g}", fill="black")
        draw.line([left - 4, gy, left, gy], fill="black")
        draw.text((4, gy - 6), f"{(10**yv if log_y else yv):.4g}", fill="black")
    for i, (name, (xv, yv)) in enumerate(series.items()):
        color = colors[i % len(colors)]
        pts = [px(float(a), float(b)) for a, b in zip(xv, yv)]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        for p in pts if len(pts) < 60 else []:
            draw.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=color)
        draw.text((left + 8, top + 6 + 14 * i), name, fill=color)
    heading = f"{title}   ({ylabel})" if ylabel else title
    draw.text((left, 8), heading, fill="black")
    draw.text(((w - len(xlabel) * 6) / 2, h - 16), xlabel, fill="black")
    return img
