"""Running statistics of a linear layer's inputs (per-channel range, Hessian, a row sample): the numbers
calibration gathers and quantizers consume. Pure tensor math; :mod:`qdit.calib` fills and stores them."""

from __future__ import annotations

from collections.abc import Mapping

import torch


class LayerStats:
    """Per-input-channel min/max, optionally the Hessian ``mean(x x^T)``, and a uniform row sample.

    ``step_absmax`` ``[calls, width]``: the per-channel absolute maximum of each call's input, in call
    order. During calibration a call is one denoising timestep of one calibration batch, so these are the
    per-timestep activation maxima that timestep-aware balancing (:func:`qdit.quant.balance.csb_factors`)
    weighs.

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
        self._steps: list[torch.Tensor] = []

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x2 = x.detach().reshape(-1, x.shape[-1]).float()
        if x2.shape[-1] != self.width:
            raise ValueError(f"input width {x2.shape[-1]} != {self.width}")
        if self.ch_min.device != x2.device:
            self.ch_min, self.ch_max = self.ch_min.to(x2.device), self.ch_max.to(x2.device)
        self.ch_min = torch.minimum(self.ch_min, x2.amin(0))
        self.ch_max = torch.maximum(self.ch_max, x2.amax(0))
        if x2.shape[0]:
            self._steps.append(x2.abs().amax(0))
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

    @property
    def step_absmax(self) -> torch.Tensor:
        """``[calls, width]`` per-call channel maxima (one row, ``absmax``, for statistics saved before
        they were kept)."""
        if not self._steps:
            return self.absmax.unsqueeze(0)
        device = self._steps[-1].device
        return torch.cat([t.to(device).reshape(-1, self.width) for t in self._steps])

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
        if self._steps:
            out["step_absmax"] = self.step_absmax.cpu()
        return out

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor]) -> LayerStats:
        stats = cls(int(state["ch_min"].shape[0]))
        stats.ch_min, stats.ch_max = state["ch_min"].float(), state["ch_max"].float()
        stats.rows_seen = int(state["rows_seen"])
        stats.hessian_sum = state["hessian_sum"].double() if "hessian_sum" in state else None
        stats.rows = state["rows"].float() if "rows" in state else None
        if "step_absmax" in state:
            stats._steps = [state["step_absmax"].float()]
        return stats
