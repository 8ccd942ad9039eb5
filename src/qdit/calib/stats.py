"""Statistics of a linear layer's inputs gathered during calibration."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from qdit.errors import QditError

CALIB_FORMAT_VERSION = 1


class LayerStats:
    """Per-input-channel min/max, optionally the Hessian ``mean(x x^T)``, and a uniform row sample.

    The row sample keeps at most ``max_rows`` input rows, a uniform sample without replacement of all rows
    seen (each row gets a random key from a seeded generator; the ``max_rows`` smallest keys are kept).
    """

    def __init__(self, width: int, hessian: bool = False, max_rows: int = 0, seed: int = 0) -> None:
        self.width = width
        self.rows_seen = 0
        self.ch_min = torch.full((width,), float("inf"))
        self.ch_max = torch.full((width,), float("-inf"))
        self.hessian_sum: torch.Tensor | None = (
            torch.zeros(width, width, dtype=torch.float64) if hessian else None
        )
        self.max_rows = max_rows
        self.rows: torch.Tensor | None = None
        self._keys: torch.Tensor | None = None
        self._gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x2 = x.detach().reshape(-1, x.shape[-1]).float()
        if x2.shape[-1] != self.width:
            raise ValueError(f"input width {x2.shape[-1]} != {self.width}")
        if self.ch_min.device != x2.device:
            self.ch_min, self.ch_max = self.ch_min.to(x2.device), self.ch_max.to(x2.device)
        self.ch_min = torch.minimum(self.ch_min, x2.amin(0))
        self.ch_max = torch.maximum(self.ch_max, x2.amax(0))
        if self.hessian_sum is not None:
            if self.hessian_sum.device != x2.device:
                self.hessian_sum = self.hessian_sum.to(x2.device)
            self.hessian_sum += (x2.T @ x2).double()
        self.rows_seen += x2.shape[0]
        if self.max_rows > 0:
            keys = torch.rand(x2.shape[0], generator=self._gen).to(x2.device)
            rows = x2 if self.rows is None else torch.cat([self.rows, x2])
            keys = keys if self._keys is None else torch.cat([self._keys, keys])
            if rows.shape[0] > self.max_rows:
                keep = torch.topk(keys, self.max_rows, largest=False).indices.sort().values
                rows, keys = rows[keep], keys[keep]
            self.rows, self._keys = rows.clone(), keys

    @property
    def hessian(self) -> torch.Tensor | None:
        """``mean over rows of x x^T`` (float64), or ``None`` when not collected."""
        if self.hessian_sum is None:
            return None
        return self.hessian_sum / max(self.rows_seen, 1)

    @property
    def absmax(self) -> torch.Tensor:
        return torch.maximum(self.ch_min.abs(), self.ch_max.abs())

    def state(self) -> dict[str, torch.Tensor]:
        out = {
            "ch_min": self.ch_min.cpu(),
            "ch_max": self.ch_max.cpu(),
            "rows_seen": torch.tensor(self.rows_seen),
        }
        if self.hessian_sum is not None:
            out["hessian_sum"] = self.hessian_sum.cpu()
        if self.rows is not None:
            out["rows"] = self.rows.cpu()
        return out

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor]) -> LayerStats:
        stats = cls(int(state["ch_min"].shape[0]))
        stats.ch_min, stats.ch_max = state["ch_min"].float(), state["ch_max"].float()
        stats.rows_seen = int(state["rows_seen"])
        stats.hessian_sum = state["hessian_sum"].double() if "hessian_sum" in state else None
        stats.rows = state["rows"].float() if "rows" in state else None
        return stats


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
