"""Activation ranges for every granularity, shared by fake quantization and the integer kernels.

``x[..., C]`` is split into groups of ``group`` channels (0 = all ``C``). The granularity is a value of
:mod:`qdit.quant.rules` (a spelling is accepted too, and parsed once at the entry points):

* ``PerToken()`` (``token``): one range per token (row of ``x.reshape(-1, C)``) and group;
* ``PerSample()`` (``sample``): one range per sample and group, over all of its tokens;
* ``PerFrame()`` (``frame``): one range per frame of each sample and group, over that frame's tokens;
* ``Static()`` (``static``): one range per group from calibrated per-channel ``ch_min`` / ``ch_max``.

What a sample and a frame are depends on the layer's **layout** (:class:`ActLayout`), which only the
architecture knows and the caller passes in as plain values:

* no layout (image models): a sample is the first dimension of ``x`` and ``frame`` equals ``sample``
  (an image is a clip of one frame), so both are today's per-first-dimension ranges;
* ``frame-major`` (``x`` is ``[S*T, N, C]``, row ``s*T + t`` is frame ``t`` of clip ``s``; or ``[S*T, C]``,
  one row per clip and frame): a sample is a clip of ``T`` consecutive rows of the first dimension;
* ``token-major`` (``x`` is ``[S*N, T, C]``, row ``s*N + n`` is token ``n`` of clip ``s`` and dimension 1
  the frames; or ``[S*N, C]``, one row per clip and token): a sample is a clip of ``N`` consecutive rows.
  In the 2-D form a row stands for its token in *every* frame of the clip, so every frame's tokens are
  all of the clip's rows there and ``frame`` equals ``sample``.

Every range contains 0 (as :func:`qdit.quant.primitives.minmax` makes it), and every granularity is
independent of the other samples in the batch. An input whose leading dimension does not split into
whole clips raises ``ValueError``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from qdit.quant.primitives import group_view, minmax
from qdit.quant.rules import ActGranularity, PerFrame, PerToken, parse_act_granularity

FRAME_MAJOR = "frame-major"
TOKEN_MAJOR = "token-major"
LAYOUT_ORDERS = (FRAME_MAJOR, TOKEN_MAJOR)


class ActLayout(NamedTuple):
    """How the leading dimensions of a linear's input map to clips, frames and tokens.

    ``order``: :data:`FRAME_MAJOR` or :data:`TOKEN_MAJOR`; ``frames``: frames per clip (``T``);
    ``tokens``: tokens per frame (``N``), needed by token-major layouts (whose first dimension is
    ``S*N``) and checked against frame-major 3-D inputs when given (0 = not given).
    """

    order: str
    frames: int
    tokens: int = 0


def as_layout(value: ActLayout | tuple | None) -> ActLayout | None:
    """``value`` (an :class:`ActLayout` or a plain tuple such as ``("token-major", 8, 16)``) validated."""
    if value is None:
        return None
    try:
        layout = ActLayout(*value)
    except TypeError:
        raise ValueError(f"an activation layout is (order, frames[, tokens]), got {value!r}") from None
    if layout.order not in LAYOUT_ORDERS:
        raise ValueError(f"unknown activation layout {layout.order!r}; use {' or '.join(LAYOUT_ORDERS)}")
    for name in ("frames", "tokens"):
        v = getattr(layout, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0 or (name == "frames" and v < 1):
            raise ValueError(f"activation layout {name} must be a positive integer, got {v!r}")
    if layout.order == TOKEN_MAJOR and layout.tokens < 1:
        raise ValueError("a token-major activation layout needs the tokens per frame (its first dim is clips x tokens)")
    return layout


def clip_shape(shape: torch.Size | tuple[int, ...], layout: ActLayout) -> tuple[tuple[int, int, int], int | None]:
    """``x``'s leading dimensions as ``(S, A, B)`` clips x rows x columns (``x.reshape(S, A, B, C)``), and
    the one of dims 1, 2 that indexes frames (``None`` when every row covers all of its clip's frames).

    Raises ``ValueError`` when ``x`` does not split into whole clips of ``layout``.
    """
    order, frames, tokens = layout
    if len(shape) not in (2, 3):
        raise ValueError(f"a {order} layout describes 2-D or 3-D activations, got shape {tuple(shape)}")
    lead = shape[0]
    per_clip = frames if order == FRAME_MAJOR else tokens
    what = "frames" if order == FRAME_MAJOR else "tokens"
    if lead % per_clip:
        raise ValueError(
            f"activations of shape {tuple(shape)} do not split into clips: the leading dim {lead} is not a "
            f"multiple of {per_clip} {what} per clip ({order} layout)"
        )
    clips = lead // per_clip
    if order == FRAME_MAJOR:
        if len(shape) == 3 and tokens and shape[1] != tokens:
            raise ValueError(f"activations of shape {tuple(shape)} have {shape[1]} tokens per frame, the layout says {tokens}")
        return (clips, frames, shape[1] if len(shape) == 3 else 1), 1
    if len(shape) == 2:
        return (clips, tokens, 1), None
    if shape[1] != frames:
        raise ValueError(f"activations of shape {tuple(shape)} have {shape[1]} frames, the {order} layout says {frames}")
    return (clips, tokens, frames), 2


def _reduce_dims(granularity: ActGranularity, frame_dim: int | None) -> tuple[int, ...]:
    """The dims of ``[S, A, B, G, g]`` one range covers for a clip-aware granularity."""
    if isinstance(granularity, PerFrame) and frame_dim is not None:
        return (3 - frame_dim, 4)  # the frame's tokens: the other of dims 1, 2
    return (1, 2, 4)  # the whole clip (sample, or frames whose rows are the clip's rows)


def shared_rows(
    shape: torch.Size | tuple[int, ...], granularity: ActGranularity | str, layout: ActLayout | None
) -> int | None:
    """How many consecutive rows of ``x.reshape(-1, C)`` share one range for a dynamic granularity (what
    a kernel that quantizes runs of rows needs), or ``None`` when a range's rows are not consecutive
    (``frame`` on 3-D token-major inputs) or come from calibration (``static``)."""
    gran = parse_act_granularity(granularity, "activation granularity")
    rows = 1
    for d in shape[:-1]:
        rows *= d
    if isinstance(gran, PerToken):
        return 1
    if not gran.layout_aware:
        return None
    if layout is None:
        return rows // shape[0] if len(shape) > 1 else rows
    (clips, a, b), frame_dim = clip_shape(shape, layout)
    dims = _reduce_dims(gran, frame_dim)
    if dims == (1, 2, 4):
        return a * b
    if frame_dim == 1:
        return b
    # token-major 3-D: a frame's tokens are every B-th row, consecutive only in degenerate shapes
    if b == 1:
        return a
    return 1 if a == 1 else None


def activation_range(
    x: torch.Tensor,
    group: int,
    granularity: ActGranularity | str,
    ch_min: torch.Tensor | None = None,
    ch_max: torch.Tensor | None = None,
    layout: ActLayout | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(xg, xmin, xmax)``: ``x`` (float32) viewed in groups and ranges broadcastable to ``xg``.

    ``xg`` is ``[..., G, g]`` for ``token`` and ``static``, ``[B, N, G, g]`` for ``sample`` and ``frame``
    without a layout, and ``[S, A, B, G, g]`` (:func:`clip_shape`) with one; ``xg.reshape(x.shape)`` is
    ``x`` in every case. An unknown spelling raises ``ValueError`` listing the known ones.
    """
    gran = parse_act_granularity(granularity, "activation granularity")
    xf = x.float()
    width = xf.shape[-1]
    if isinstance(gran, PerToken):
        xg = group_view(xf, group)
        xmin, xmax = minmax(xg)
    elif gran.layout_aware and layout is None:
        lead = xf.shape[0] if xf.dim() > 1 else 1
        xg = group_view(xf.reshape(lead, -1, width), group)  # [B, N, G, g]
        xmin, xmax = minmax(xg, dim=(1, 3))
    elif gran.layout_aware:
        (clips, a, b), frame_dim = clip_shape(xf.shape, layout)
        xg = group_view(xf.reshape(clips, a, b, width), group)  # [S, A, B, G, g]
        xmin, xmax = minmax(xg, dim=_reduce_dims(gran, frame_dim))
    elif not gran.dynamic:
        if ch_min is None or ch_max is None:
            raise ValueError("static activation ranges need calibrated ch_min and ch_max")
        xg = group_view(xf, group)
        xmin = group_view(ch_min.float(), group).amin(-1, keepdim=True).clamp(max=0)
        xmax = group_view(ch_max.float(), group).amax(-1, keepdim=True).clamp(min=0)
    else:
        raise ValueError(f"no activation ranges are defined for {gran!r}")  # a new dynamic kind of range
    return xg, xmin, xmax
