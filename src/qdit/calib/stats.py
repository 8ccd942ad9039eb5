"""Calibration data: the :class:`~qdit.quant.stats.LayerStats` of every layer, saved and loaded as a file."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from qdit.errors import QditError
from qdit.quant.stats import LayerStats

CALIB_FORMAT_VERSION = 1


class Calibration(Mapping[str, LayerStats]):
    """Per-layer :class:`LayerStats` by module name, with a small JSON-able ``meta`` dict."""

    def __init__(self, layers: Mapping[str, LayerStats] | None = None, meta: dict | None = None) -> None:
        self.layers: dict[str, LayerStats] = dict(layers or {})
        self.meta: dict = dict(meta or {})

    def __getitem__(self, name: str) -> LayerStats:
        return self.layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def save(self, path: str | os.PathLike) -> None:
        """Write a ``calib.pt`` (tensors only, loadable with ``weights_only``), atomically."""
        from qdit.io.atomic import atomic_path

        blob = {
            "format_version": CALIB_FORMAT_VERSION,
            "meta": self.meta,
            "layers": {n: s.state() for n, s in self.layers.items()},
        }
        with atomic_path(path, ".pt") as tmp:
            torch.save(blob, tmp)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        p = Path(path)
        if not p.is_file():
            raise QditError(f"calibration file not found: {p}")
        try:
            blob = torch.load(str(p), map_location="cpu", weights_only=True)
            if blob.get("format_version") != CALIB_FORMAT_VERSION:
                raise ValueError(f"unsupported format version {blob.get('format_version')!r}")
            return cls({n: LayerStats.from_state(s) for n, s in blob["layers"].items()}, blob.get("meta", {}))
        except Exception as exc:
            raise QditError(f"cannot read calibration file {p}: {exc}") from None
