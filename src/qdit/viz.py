"""Pictures: image grids and side-by-side comparisons (Pillow only)."""

from __future__ import annotations

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
