"""Quantized weight matrices: integer codes plus per-(row, group) scales and zero points."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from qdit.quant.finite import check_finite
from qdit.quant.primitives import group_range, group_view, num_groups, qparams, quantize
from qdit.quant.rules import check_bits

WEIGHT_SCALE_DTYPE = torch.float16
_RANGES = {"rtn": "minmax", "mse": "mse"}  # the round-to-nearest methods and the range each rounds on


@dataclass
class QWeight:
    """A weight ``W[out, in]`` quantized in groups of ``group_size`` input columns (0 = the whole row).

    ``codes`` are unsigned ``uint8 [out, in]``; for a symmetric quantizer they are the signed codes
    offset by ``2^(bits-1)`` and ``zero`` is ``None`` (implicitly ``2^(bits-1)``). ``scale`` and
    ``zero`` are ``[out, G]``. ``W_hat = (codes - zero) * scale``, broadcast over each group.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    bits: int
    group_size: int
    symmetric: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.codes.shape[0]), int(self.codes.shape[1])

    def zero_points(self) -> torch.Tensor:
        """Zero points as float32 ``[out, G]`` (the implicit offset for symmetric)."""
        if self.zero is None:
            return torch.full(self.scale.shape, float(2 ** (self.bits - 1)), device=self.scale.device)
        return self.zero.float()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        out, width = self.shape
        g = self.scale.shape[1]
        q = self.codes.float().reshape(out, g, width // g)
        w = (q - self.zero_points().unsqueeze(-1)) * self.scale.float().unsqueeze(-1)
        return w.reshape(out, width).to(dtype)

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> QWeight:
        """A copy with ``fn`` applied to every tensor (as ``nn.Module._apply`` does)."""
        zero = None if self.zero is None else fn(self.zero)
        return QWeight(fn(self.codes), fn(self.scale), zero, self.bits, self.group_size, self.symmetric)


def pack_qweight(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    bits: int,
    group_size: int,
    symmetric: bool,
    scale_dtype: torch.dtype,
) -> QWeight:
    """Store float codes ``q [out, in]`` and float32 ``scale``/``zero`` ``[out, G]`` as a :class:`QWeight`."""
    if symmetric:
        offset = 2 ** (bits - 1)
        return QWeight((q + offset).to(torch.uint8), scale.to(scale_dtype), None, bits, group_size, True)
    return QWeight(q.to(torch.uint8), scale.to(scale_dtype), zero.to(torch.uint8), bits, group_size, False)


def quantize_weight(
    weight: torch.Tensor,
    bits: int,
    group_size: int = 0,
    symmetric: bool = False,
    method: str = "rtn",
    scale_dtype: torch.dtype = WEIGHT_SCALE_DTYPE,
) -> QWeight:
    """Round-to-nearest quantization of ``weight[out, in]``; ``method`` ``"rtn"`` (min/max range) or
    ``"mse"`` (per-group clip search)."""
    check_bits(bits)
    if method not in _RANGES:
        raise ValueError(
            f"quantize_weight: unknown method {method!r}; use 'rtn' or 'mse' (every method: "
            "qdit.quant.methods.quantize_by_method)"
        )
    w = weight.detach().float()
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(w.shape)}")
    check_finite(weight, f"weight {list(w.shape)}")
    out, width = w.shape
    num_groups(width, group_size)
    wg = group_view(w, group_size)
    xmin, xmax = group_range(wg, bits, symmetric, _RANGES[method], scale_dtype)
    scale, zero = qparams(xmin, xmax, bits, symmetric, scale_dtype)
    q = quantize(wg, scale, zero, bits, symmetric).reshape(out, width)
    return pack_qweight(q, scale.squeeze(-1), zero.squeeze(-1), bits, group_size or 0, symmetric, scale_dtype)
