"""Two pure-PyTorch integer paths: the exact reference, and a fallback built on ``torch._int_mm``."""

from __future__ import annotations

import torch

from qdit.kernels.formats import IntActs, IntWeight, block_size, expand_blocks


def int_linear_reference(acts: IntActs, weight: IntWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The exact product (integer dot products in float64, which holds them exactly), float32 out."""
    m, k = acts.codes.shape
    blk = block_size(k, acts.group, weight.group)
    nb = k // blk
    a = acts.codes.double() - acts.zero.double().repeat_interleave(acts.group, dim=1)
    w = weight.codes().double() - _zero_points(weight).repeat_interleave(weight.group, dim=1)
    p = torch.bmm(a.reshape(m, nb, blk).transpose(0, 1), w.reshape(-1, nb, blk).permute(1, 2, 0))
    sa = expand_blocks(acts.scale.double(), k, blk).t().unsqueeze(-1)  # [nb, M, 1]
    sw = expand_blocks(weight.scale.double(), k, blk).t().unsqueeze(1)  # [nb, 1, N]
    y = (p * sa * sw).sum(0)
    if bias is not None:
        y = y + bias.double()
    return y.float()


def _zero_points(weight: IntWeight) -> torch.Tensor:
    if weight.zero is None:
        return torch.full(
            weight.scale.shape, float(2 ** (weight.bits - 1)), dtype=torch.float64, device=weight.scale.device
        )
    return weight.zero.double()


def _int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``int8 [M, B] @ int8 [B, N]`` -> ``int32``; ``torch._int_mm`` where its shape rules allow."""
    if a.shape[0] > 16 and a.shape[1] % 8 == 0 and b.shape[1] % 8 == 0:
        try:
            return torch._int_mm(a, b)
        except RuntimeError:
            pass
    return (a.double() @ b.double()).to(torch.int32)  # exact: |sum| < 2^31 << 2^53


def int_linear_torch(acts: IntActs, weight: IntWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The same product, one ``torch._int_mm`` per K block (the fallback when no compiled kernel loads)."""
    m, k = acts.codes.shape
    blk = block_size(k, acts.group, weight.group)
    nb = k // blk
    a8 = (acts.codes.to(torch.int16) - 128).to(torch.int8)  # a - z_a == a8 - (z_a - 128)
    za = expand_blocks(acts.zero - 128, k, blk)  # [M, nb]
    sa = expand_blocks(acts.scale.float(), k, blk)
    w8 = weight.signed()
    dw = expand_blocks(weight.offset(), k, blk)  # [N, nb]
    sw = expand_blocks(weight.scale.float(), k, blk)
    a_sum = a8.reshape(m, nb, blk).sum(-1, dtype=torch.int32)
    w_sum = w8.reshape(-1, nb, blk).sum(-1, dtype=torch.int32)
    wt = w8.t()
    y = torch.zeros(m, weight.out_features, dtype=torch.float32, device=acts.codes.device)
    for b in range(nb):
        cols = slice(b * blk, (b + 1) * blk)
        p = _int_matmul(a8[:, cols].contiguous(), wt[cols].contiguous())
        p += dw[:, b][None] * a_sum[:, b][:, None]
        p -= za[:, b][:, None] * (w_sum[:, b] + blk * dw[:, b])[None]
        y.addcmul_(p.float(), sa[:, b][:, None] * sw[:, b][None])
    if bias is not None:
        y += bias.float()
    return y
