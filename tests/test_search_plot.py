"""The search plots (matplotlib on Agg, returned as Pillow images)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from qdit.search.plot import PALETTE, Series, _draw, _figure, line_plot, search_plot


def _rgb(color: str) -> np.ndarray:
    return np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)])


def has_color(img: Image.Image, color: str, tol: int = 40, min_pixels: int = 20) -> bool:
    px = np.asarray(img.convert("RGB")).reshape(-1, 3).astype(int)
    return int((np.abs(px - _rgb(color)).max(axis=1) <= tol).sum()) >= min_pixels


def not_blank(img: Image.Image) -> bool:
    px = np.asarray(img.convert("L"))
    return float(px.std()) > 5 and float((px < 128).mean()) > 0.002  # lines and text on white


def history() -> list[dict]:
    """A cheap search's history: low-fidelity rounds, fits with 16 and with 64 samples."""
    rows = [dict(kind="fidelity", n=8, value=v, images=8 * i) for i, v in enumerate([5.0, 4.0, 4.5, 3.0])]
    rows += [
        dict(kind="fit", n=16, value=v, images=40 + 16 * i, forwards=0) for i, v in enumerate([300, 290, 295])
    ]
    rows += [
        dict(kind="fit", n=64, value=v, images=100 + 64 * i, forwards=0)
        for i, v in enumerate([289, 291, 285])
    ]
    return rows


def test_line_plot_size_colors_and_labels() -> None:
    series = [
        Series("full: best so far", [1, 10, 100], [3.0, 2.0, 1.5], PALETTE[0], "step"),
        Series("cheap: evaluations", [2, 20, 50], [2.5, 1.8, 1.9], PALETTE[2], "points"),
        Series("uniform g128", [1.0], [2.2], PALETTE[1], "hline"),
    ]
    img = line_plot(
        series, title="fitness of 64 samples vs cost", xlabel="images sampled", ylabel="FD", logx=True
    )
    assert img.mode == "RGB" and img.size == (720, 440) and not_blank(img)
    for color in (PALETTE[0], PALETTE[1], PALETTE[2]):
        assert has_color(img, color), color
    assert line_plot(series, size=(400, 300)).size == (400, 300)
    # the labels reach matplotlib whole, spaces included (the Pillow plots lost them)
    fig, (ax,) = _figure((720, 440))
    _draw(ax, series, "fitness of 64 samples vs cost", "images sampled", "FD", True)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["full: best so far", "cheap: evaluations", "uniform g128"]
    assert ax.get_title(loc="left") == "fitness of 64 samples vs cost" and ax.get_xscale() == "log"


def test_line_plot_without_drawable_points() -> None:
    img = line_plot([Series("nothing", [0.0, -1.0], [float("nan"), 1.0])], logx=True)
    assert img.size == (720, 440) and not_blank(img)  # axes and "no data"


@pytest.mark.parametrize("method", ["cheap", "full"])
def test_search_plot_writes_the_png(tmp_path, method: str) -> None:
    rows = history() if method == "cheap" else [r for r in history() if r["kind"] == "fit" and r["n"] == 64]
    report = {
        "num_samples": 64,
        "history": rows,
        "method": method,
        "baseline_fitness": 310.0,
        "baseline_group_size": 64,
    }
    img = search_plot(report, tmp_path / "p.png")
    saved = Image.open(tmp_path / "p.png")
    # a cheap search with low-fidelity rounds gets a second panel below the first
    assert saved.size == img.size == ((720, 880) if method == "cheap" else (720, 440))
    assert not_blank(saved) and has_color(saved, PALETTE[0]) and has_color(saved, PALETTE[1])
    if method == "cheap":  # the fidelity series are drawn in the lower panel
        lower = saved.crop((0, 440, 720, 880))
        assert has_color(lower, PALETTE[2]) and not has_color(lower, PALETTE[1])


def test_matplotlib_is_imported_only_to_draw() -> None:
    code = "import sys, qdit, qdit.search, qdit.search.plot; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
