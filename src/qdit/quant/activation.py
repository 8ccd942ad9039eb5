"""Activation ranges for the three granularities, shared by fake quantization and the integer kernels.

``x[..., C]`` is split into groups of ``group`` channels (0 = all ``C``):

* ``token``: one range per token (row of ``x.reshape(-1, C)``) and group;
* ``sample``: one range per sample (first dimension of ``x``) and group, over all of its tokens;
* ``static``: one range per group from calibrated per-channel ``ch_min`` / ``ch_max``.

Every range contains 0 (as :func:`qdit.quant.primitives.minmax` makes it).
"""

from __future__ import annotations

import torch

from qdit.quant.primitives import group_view, minmax


def activation_range(
    x: torch.Tensor,
    group: int,
    granularity: str,
    ch_min: torch.Tensor | None = None,
    ch_max: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(xg, xmin, xmax)``: ``x`` (float32) viewed in groups and ranges broadcastable to ``xg``.

    ``xg`` is ``[..., G, g]`` for ``token`` and ``static`` and ``[B, N, G, g]`` for ``sample``.
    """
    xf = x.float()
    width = xf.shape[-1]
    if granularity == "token":
        xg = group_view(xf, group)
        xmin, xmax = minmax(xg)
    elif granularity == "sample":
        xg = group_view(xf.reshape(xf.shape[0], -1, width), group)  # [B, N, G, g]
        xmin, xmax = minmax(xg, dim=(1, 3))
    elif granularity == "static":
        if ch_min is None or ch_max is None:
            raise ValueError("static activation ranges need calibrated ch_min and ch_max")
        xg = group_view(xf, group)
        xmin = group_view(ch_min.float(), group).amin(-1, keepdim=True).clamp(max=0)
        xmax = group_view(ch_max.float(), group).amax(-1, keepdim=True).clamp(min=0)
    else:
        raise ValueError(f"unknown activation granularity {granularity!r}; use token, sample or static")
    return xg, xmin, xmax
