"""Quantizing a weight matrix by the name of a registered method (:data:`qdit.quant.rules.WEIGHT_METHODS`):
the one place that maps a method's name to its implementation (a module of its own because it needs
both :mod:`qdit.quant.weight` and :mod:`qdit.quant.gptq`, which builds on the former)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from qdit.quant.gptq import gptq_quantize
from qdit.quant.rules import weight_method
from qdit.quant.weight import WEIGHT_SCALE_DTYPE, QWeight, quantize_weight

# (weight, hessian, bits, group_size, symmetric, scale_dtype) -> QWeight
Implementation = Callable[[torch.Tensor, torch.Tensor | None, int, int, bool, torch.dtype], QWeight]


def _round_to_nearest(method: str) -> Implementation:
    def run(
        w: torch.Tensor, h: torch.Tensor | None, bits: int, g: int, sym: bool, dt: torch.dtype
    ) -> QWeight:
        return quantize_weight(w, bits, g, sym, method, dt)

    return run


def _gptq(w: torch.Tensor, h: torch.Tensor | None, bits: int, g: int, sym: bool, dt: torch.dtype) -> QWeight:
    if h is None:
        raise ValueError("weight method gptq needs the Hessian of the layer's inputs (calibration)")
    return gptq_quantize(w, h, bits, g, sym, scale_dtype=dt)


# one per registered name (tests/test_quant_rules.py checks that the two agree)
IMPLEMENTATIONS: dict[str, Implementation] = {
    "rtn": _round_to_nearest("rtn"),
    "mse": _round_to_nearest("mse"),
    "gptq": _gptq,
}


def quantize_by_method(
    weight: torch.Tensor,
    method: str,
    bits: int,
    group_size: int = 0,
    symmetric: bool = False,
    hessian: torch.Tensor | None = None,
    scale_dtype: torch.dtype = WEIGHT_SCALE_DTYPE,
) -> QWeight:
    """``weight[out, in]`` quantized by the registered ``method`` (``hessian``: ``[in, in]``, for the
    methods that need it)."""
    return IMPLEMENTATIONS[weight_method(method).name](
        weight, hessian, bits, group_size, symmetric, scale_dtype
    )
