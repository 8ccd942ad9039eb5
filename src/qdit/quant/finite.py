"""The one rule for non-finite values (NaN, +-Inf): weights, scales, biases and numbers must be finite.

A NaN in a weight or a scale does not crash anything: it turns into black images, or, once quantized,
into a group of zeros that hides a corrupt checkpoint behind plausible images. So every boundary where
tensors or numbers come in (checkpoint loading, weight quantization, qparams, command-line numbers)
calls these checks, and the error names what was wrong and where.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from qdit.errors import QditError


class NonFiniteError(QditError, ValueError):
    """A tensor or a number that must be finite holds NaN or +-Inf."""


def _describe(x: torch.Tensor) -> str:
    bad = ~torch.isfinite(x)
    n = int(bad.sum())
    first = tuple(int(i) for i in bad.nonzero()[0]) if x.dim() else ()
    kinds = []
    if bool(torch.isnan(x).any()):
        kinds.append("NaN")
    if bool(torch.isinf(x).any()):
        kinds.append("Inf")
    where = f", the first at index {list(first)}" if first else ""
    return f"{n} non-finite value{'s' if n != 1 else ''} ({'/'.join(kinds)}) of {x.numel()}{where}"


def check_finite(x: torch.Tensor, what: str) -> torch.Tensor:
    """``x`` itself when every value is finite (integer tensors always are); else :class:`NonFiniteError`."""
    if x.is_floating_point() or x.is_complex():
        if x.is_meta:
            return x
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteError(f"{what} has {_describe(x)}")
    return x


def check_finite_tensors(tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Every tensor of a state dict / safetensors file must be finite; the error names the first bad one."""
    for key, value in tensors.items():
        check_finite(value, f"{source}: tensor {key!r}")


def check_finite_number(value: float, name: str) -> float:
    """A finite ``float(value)``; else :class:`NonFiniteError` naming ``name`` (e.g. ``--cfg``)."""
    v = float(value)
    if not math.isfinite(v):
        raise NonFiniteError(f"{name} must be a finite number, got {value!r}")
    return v
