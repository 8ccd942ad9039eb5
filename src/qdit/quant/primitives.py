"""Uniform affine quantization: pure tensor functions (no modules, no files).

Conventions, shared by weights and activations:

* Groups run along the **last** dimension: ``x[..., C]`` is viewed as ``[..., C // g, g]``;
  ``group_size`` 0 or ``None`` means one group per row (the whole last dimension).
* The range of a group always contains 0: ``min = min(x_min, 0)``, ``max = max(x_max, 0)``. So 0 is
  exactly representable and the asymmetric zero point is itself a valid ``bits``-bit code.
* Asymmetric: ``s = (max - min) / (2^b - 1)``, ``z = round(-min / s)``,
  ``q = clamp(round(x / s) + z, 0, 2^b - 1)``, ``x_hat = (q - z) * s``.
* Symmetric: ``s = absmax / (2^(b-1) - 1)``, ``z = 0``, ``q = clamp(round(x / s), -2^(b-1), 2^(b-1) - 1)``.
* A zero range gives ``s = 1`` (all codes equal ``z``, which dequantizes to exactly 0): ``s > 0`` always.
* Everything is computed in float32; ``round`` is round-half-to-even (``torch.round``). A range wider
  than float32 (``max - min`` over ``3.4e38``) is divided before it is subtracted, so it never
  overflows to a NaN scale.
* Non-finite values: a NaN range gives a NaN scale (never the zero-range fallback ``s = 1``, which would
  turn a corrupt group into plausible zeros). :func:`fake_quantize` defines its own behaviour: the range
  of a group comes from its finite values, ``+-Inf`` saturate to the group's largest / smallest level
  and ``NaN`` stays ``NaN`` (element by element: one bad value never spreads to its group). Weights must
  be finite (:func:`qdit.quant.weight.quantize_weight` raises :class:`qdit.quant.finite.NonFiniteError`).
* A ``scale_dtype`` (e.g. float16) that cannot hold a scale is reported with a :class:`ScaleRangeWarning`:
  a scale below its smallest subnormal would round to 0 (the group quantizes to 0), one above its
  largest value is clamped (the group is clipped).
"""

from __future__ import annotations

import warnings

import torch

from qdit.quant.rules import check_bits, check_divides
from qdit.quant.rules import check_group_size as rules_check_group_size

# the MSE clip search: shrink factors 1.000, 0.999, ..., 0.901 and the L_p norm of the error
MSE_GRID = 100
MSE_STEP = 0.001
MSE_NORM = 2.4


def code_range(bits: int, symmetric: bool = False) -> tuple[int, int]:
    """The smallest and largest integer code of a ``bits``-bit quantizer."""
    check_bits(bits)
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


class ScaleRangeWarning(UserWarning):
    """Scales outside the range of the dtype they are stored in (flushed to 0 or clamped)."""


def check_group_size(group_size: int | None) -> int | None:
    """A group size (:func:`qdit.quant.rules.check_group_size`) or ``None`` (one group per row)."""
    return None if group_size is None else rules_check_group_size(group_size)


def num_groups(width: int, group_size: int | None) -> int:
    """How many groups of ``group_size`` (0 or ``None``: one group) a row of ``width`` values has."""
    check_group_size(group_size)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"cannot group a row of width {width!r}: it must hold at least one value")
    check_divides(group_size or 0, width)
    return width // (group_size or width)


def group_view(x: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """``x[..., C]`` as ``[..., C // g, g]`` (a view when possible)."""
    if x.dim() == 0:
        raise ValueError("cannot group a 0-d tensor (a scalar): give at least one dimension")
    c = x.shape[-1]
    n = num_groups(c, group_size)
    return x.reshape(*x.shape[:-1], n, c // n)


def minmax(x: torch.Tensor, dim: int | tuple[int, ...] = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Range over ``dim`` (kept), widened to contain 0."""
    if isinstance(dim, tuple) and len(dim) > 1:
        # one dimension at a time, innermost first: the same values, and faster than one strided
        # multi-dimension reduction (e.g. a sample's groups over all of its tokens)
        lo, hi = x, x
        for d in sorted(dim, key=lambda d: d % x.dim(), reverse=True):
            lo, hi = lo.amin(dim=d, keepdim=True), hi.amax(dim=d, keepdim=True)
        return lo.clamp(max=0), hi.clamp(min=0)
    return x.amin(dim=dim, keepdim=True).clamp(max=0), x.amax(dim=dim, keepdim=True).clamp(min=0)


def qparams(
    xmin: torch.Tensor,
    xmax: torch.Tensor,
    bits: int,
    symmetric: bool = False,
    scale_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point (float32 tensors) for the ranges ``[xmin, xmax]`` (which should contain 0).

    With ``scale_dtype`` the scale is rounded to that dtype first (how it will be stored), and the zero
    point and codes are computed with the rounded scale, so storing it loses nothing further.
    """
    lo, hi = code_range(bits, symmetric)
    xmin = xmin.float()
    xmax = xmax.float()
    if symmetric:
        scale = torch.maximum(xmin.abs(), xmax.abs()) / hi
    else:
        span = xmax - xmin
        # a range wider than float32 overflows when subtracted first: divide first there (only there,
        # so every other scale keeps its exact float32 value)
        scale = torch.where(
            torch.isinf(span) & xmin.isfinite() & xmax.isfinite(), xmax / hi - xmin / hi, span / hi
        )
    if scale_dtype is not None and scale_dtype != torch.float32:
        scale = _round_scale(scale, scale_dtype)
    # a zero range falls back to 1; a NaN range stays NaN (never a plausible all-zero group)
    scale = torch.where((scale > 0) | torch.isnan(scale), scale, torch.ones_like(scale))
    if symmetric:
        zero = torch.zeros_like(scale)
    else:
        zero = torch.round(-xmin / scale).clamp(lo, hi)
    return scale, zero


def _round_scale(scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``scale`` rounded to ``dtype`` (clamped to its largest value), warning when that loses groups."""
    info = torch.finfo(dtype)
    rounded = scale.clamp(max=info.max).to(dtype).float()
    under = int(((scale > 0) & (rounded == 0)).sum())
    over = int((scale > info.max).sum())
    if under or over:
        parts = []
        if under:
            parts.append(
                f"{under} with a range too small (scale below {info.smallest_normal * 2.0**-10:.3g}: quantized to 0)"
            )
        if over:
            parts.append(f"{over} with a range too large (scale above {info.max:.6g}: clipped)")
        warnings.warn(
            f"{' and '.join(parts)} of {scale.numel()} groups for {str(dtype).replace('torch.', '')} scales",
            ScaleRangeWarning,
            stacklevel=3,
        )
    return rounded


def quantize(
    x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, symmetric: bool = False
) -> torch.Tensor:
    """Integer codes (as float32 values) ``clamp(round(x / s) + z, lo, hi)``."""
    lo, hi = code_range(bits, symmetric)
    return torch.clamp(torch.round(x.float() / scale) + zero, lo, hi)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return (q.float() - zero) * scale


def fake_quantize_range(
    xg: torch.Tensor,
    xmin: torch.Tensor,
    xmax: torch.Tensor,
    bits: int,
    symmetric: bool = False,
    scale_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Quantize-dequantize ``xg`` with ranges broadcastable to it (float32 result)."""
    scale, zero = qparams(xmin, xmax, bits, symmetric, scale_dtype)
    lo, hi = code_range(bits, symmetric)
    # quantize then dequantize, in place on one temporary: the same arithmetic as
    # dequantize(quantize(...)), without four full-size intermediates
    return xg.float().div(scale).round_().add_(zero).clamp_(lo, hi).sub_(zero).mul_(scale)


def fake_quantize(
    x: torch.Tensor,
    bits: int,
    group_size: int | None = None,
    symmetric: bool = False,
    scale_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Quantize-dequantize with one ``(s, z)`` per row and group of the last dimension; same dtype as ``x``.

    Non-finite inputs are defined element by element: a group's range comes from its finite values,
    ``+Inf`` / ``-Inf`` come back as the group's largest / smallest level and ``NaN`` as ``NaN``.
    """
    check_bits(bits)
    if x.numel() == 0 and x.dim() > 0:  # nothing to quantize (the group size must still be valid)
        check_group_size(group_size)
        return x.clone()
    xg = group_view(x.float(), group_size)
    xmin, xmax = minmax(xg)
    if not bool(torch.isfinite(xmin).all() & torch.isfinite(xmax).all()):  # amin/amax propagate NaN
        xmin, xmax = minmax(torch.where(torch.isfinite(xg), xg, torch.zeros_like(xg)))
    out = fake_quantize_range(xg, xmin, xmax, bits, symmetric, scale_dtype)
    # a level beyond float32 (a range within a step of +-3.4e38) is the largest finite value
    fmax = torch.finfo(torch.float32).max
    return out.clamp_(-fmax, fmax).reshape(x.shape).to(x.dtype)


def mse_clip_range(
    xg: torch.Tensor,
    bits: int,
    symmetric: bool = False,
    scale_dtype: torch.dtype | None = None,
    grid: int = MSE_GRID,
    step: float = MSE_STEP,
    norm: float = MSE_NORM,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group clipped range of ``xg[..., G, g]``: the shrink factor ``1 - i * step`` (i < grid) whose
    quantization error ``sum |x - x_hat|^norm`` over the group is lowest (ties keep the wider range)."""
    xg = xg.float()
    base_min, base_max = minmax(xg)
    best_err = torch.full_like(base_min, float("inf"))
    best_min, best_max = base_min.clone(), base_max.clone()
    for i in range(grid):
        factor = 1.0 - i * step
        cmin, cmax = base_min * factor, base_max * factor
        err = (fake_quantize_range(xg, cmin, cmax, bits, symmetric, scale_dtype) - xg).abs_().pow_(norm)
        err = err.sum(dim=-1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_min = torch.where(better, cmin, best_min)
        best_max = torch.where(better, cmax, best_max)
    return best_min, best_max


def group_range(
    xg: torch.Tensor,
    bits: int,
    symmetric: bool = False,
    method: str = "minmax",
    scale_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group range of ``xg[..., G, g]`` by ``method``: ``"minmax"`` or ``"mse"`` (clip search)."""
    if method == "minmax":
        return minmax(xg.float())
    if method == "mse":
        return mse_clip_range(xg, bits, symmetric, scale_dtype)
    raise ValueError(f"unknown range method {method!r}; use 'minmax' or 'mse'")
