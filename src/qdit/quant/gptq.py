"""GPTQ: second-order weight rounding, column by column, with error feedback through the inverse Hessian.

For a linear layer with inputs ``X`` the layer-output error ``||W X - W_hat X||^2`` is a quadratic form
in ``H = X^T X``. Columns are quantized in order; after each one the rounding error, scaled by the
Cholesky factor of ``H^-1``, is pushed onto the columns not yet quantized. Updates are applied lazily in
blocks (which changes nothing mathematically). With a group size, a group's ``(s, z)`` are computed
when the column loop reaches the group's first column, from the weights as updated so far.
"""

from __future__ import annotations

import math

import torch

from qdit.quant.finite import check_finite
from qdit.quant.primitives import group_range, num_groups, qparams, quantize
from qdit.quant.rules import check_bits
from qdit.quant.weight import WEIGHT_SCALE_DTYPE, QWeight, pack_qweight

GPTQ_BLOCK = 128
GPTQ_DAMP = 0.01


class HessianAccumulator:
    """Running ``H = mean over rows of x x^T`` for inputs ``x[..., in]`` (float64 sum)."""

    def __init__(self, width: int, device: torch.device | str | None = None) -> None:
        self.sum = torch.zeros(width, width, dtype=torch.float64, device=device)
        self.rows = 0

    def add(self, x: torch.Tensor) -> None:
        x2 = x.detach().reshape(-1, x.shape[-1]).float()
        if self.sum.device != x2.device:
            self.sum = self.sum.to(x2.device)
        self.sum += (x2.T @ x2).double()
        self.rows += x2.shape[0]

    @property
    def hessian(self) -> torch.Tensor:
        return self.sum / max(self.rows, 1)


def inverse_hessian_factor(
    hessian: torch.Tensor, damp: float = GPTQ_DAMP
) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1`` (float32) and the mask of dead columns.

    Dead columns (zero diagonal: the input channel was always 0) get ``H_ii = 1``. If the damped matrix is
    still not positive definite the damping is raised tenfold, up to three times.
    """
    h = hessian.detach().to(torch.float64).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    base = torch.diagonal(h).mean()
    for attempt in range(4):
        damped = h + (damp * 10**attempt) * base * eye
        chol, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            inv = torch.cholesky_inverse(chol)
            upper, info = torch.linalg.cholesky_ex(inv, upper=True)
            if int(info) == 0:
                return upper.float(), dead
    raise ValueError(
        "GPTQ: the Hessian is not positive definite even with 1000x damping (bad calibration data?)"
    )


def gptq_block_size(group_size: int, block_size: int = GPTQ_BLOCK) -> int:
    """The lazy-update block: ``block_size`` rounded up to a multiple of the group, so groups never span blocks."""
    if not group_size:
        return block_size
    return group_size * math.ceil(block_size / group_size)


@torch.no_grad()
def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    group_size: int = 0,
    symmetric: bool = False,
    block_size: int = GPTQ_BLOCK,
    damp: float = GPTQ_DAMP,
    range_method: str = "minmax",
    scale_dtype: torch.dtype = WEIGHT_SCALE_DTYPE,
) -> QWeight:
    """Quantize ``weight[out, in]`` with GPTQ given the input Hessian ``H[in, in]`` (any positive scale).

    With ``H = I`` the result equals round-to-nearest (:func:`qdit.quant.weight.quantize_weight`).
    """
    check_bits(bits)
    w = weight.detach().float().clone()
    out, width = w.shape
    if tuple(hessian.shape) != (width, width):
        raise ValueError(f"GPTQ: Hessian shape {tuple(hessian.shape)} does not match weight width {width}")
    check_finite(weight, f"weight {[out, width]}")
    check_finite(hessian, f"GPTQ Hessian of the weight {[out, width]}")
    ngroups = num_groups(width, group_size)
    g = group_size or width
    hinv, dead = inverse_hessian_factor(hessian.to(w.device), damp)
    w[:, dead] = 0.0

    codes = torch.empty(out, width, dtype=torch.float32, device=w.device)
    scales = torch.empty(out, ngroups, dtype=torch.float32, device=w.device)
    zeros = torch.empty(out, ngroups, dtype=torch.float32, device=w.device)
    scale = zero = torch.empty(0)
    if not group_size:  # one range per output row, from the original weights
        xmin, xmax = group_range(w.unsqueeze(1), bits, symmetric, range_method, scale_dtype)
        scale, zero = qparams(xmin, xmax, bits, symmetric, scale_dtype)
        scale, zero = scale.reshape(out, 1), zero.reshape(out, 1)
        scales[:, :1], zeros[:, :1] = scale, zero

    block = gptq_block_size(group_size, block_size)
    for i1 in range(0, width, block):
        i2 = min(i1 + block, width)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if group_size and col % g == 0:
                xmin, xmax = group_range(
                    w1[:, i : i + g].unsqueeze(1), bits, symmetric, range_method, scale_dtype
                )
                scale, zero = qparams(xmin, xmax, bits, symmetric, scale_dtype)
                scale, zero = scale.reshape(out, 1), zero.reshape(out, 1)
                scales[:, col // g : col // g + 1], zeros[:, col // g : col // g + 1] = scale, zero
            col_w = w1[:, i : i + 1]
            q = quantize(col_w, scale, zero, bits, symmetric)
            codes[:, col : col + 1] = q
            err = (col_w - (q - zero) * scale) / h1[i, i]
            w1[:, i + 1 :] -= err * h1[i : i + 1, i + 1 :]
            err1[:, i : i + 1] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return pack_qweight(codes, scales, zeros, bits, group_size or 0, symmetric, scale_dtype)
