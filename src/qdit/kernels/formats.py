"""The integer formats every kernel shares: quantized activations and weights as plain tensors.

The product computed by every path (``qdit.kernels``) is, for ``M`` rows, ``N`` outputs, ``K`` inputs
split into blocks ``b`` of ``B`` columns (the finer of the activation and the weight group)::

    y[t, o] = bias[o] + sum_b  s_a[t, b] * s_w[o, b] * sum_{k in b} (a[t, k] - z_a[t, b]) * (w[o, k] + d_w[o, b])

* activations: ``a`` unsigned 8-bit codes, ``z_a`` the code of real 0 (128 for symmetric quantizers,
  whose signed codes are stored offset by 128), ``s_a`` float32, all per row and activation group;
* weights: ``w = code - 2^(bits-1)`` as signed 8-bit (any bit width up to 8 fits), ``d_w =
  2^(bits-1) - z_w`` (0 for symmetric weights), ``s_w`` per output row and weight group.

Expanded, the inner sum is ``P + d_w * Asum - z_a * Wsum - B * z_a * d_w`` with the integer dot product
``P = sum a * w``, ``Asum = sum a`` (per row and block) and ``Wsum = sum w`` (per output and block,
precomputed): the usual zero-point correction terms, so the hot loop is a plain u8 x s8 dot product.
The integer parts are exact; only the final scaling is rounded (float32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qdit.quant.activation import ActLayout, activation_range
from qdit.quant.primitives import num_groups, qparams, quantize
from qdit.quant.rules import ActGranularity, PerToken, check_bits, divides
from qdit.quant.weight import QWeight

ACT_OFFSET = 128  # signed (symmetric) activation codes are stored as unsigned: code + 128


@dataclass
class IntActs:
    """Activations quantized to unsigned 8-bit codes: ``x_hat = (codes - zero) * scale`` per group."""

    codes: torch.Tensor  # uint8 [M, K]
    scale: torch.Tensor  # float32 [M, G]
    zero: torch.Tensor  # int32 [M, G]

    @property
    def group(self) -> int:
        return self.codes.shape[1] // self.scale.shape[1]

    def dequantize(self) -> torch.Tensor:
        m, k = self.codes.shape
        g = self.scale.shape[1]
        q = self.codes.float().reshape(m, g, k // g) - self.zero.float().unsqueeze(-1)
        return (q * self.scale.unsqueeze(-1)).reshape(m, k)


def quantize_acts(
    x: torch.Tensor,
    bits: int,
    group: int,
    symmetric: bool = False,
    granularity: ActGranularity | str = PerToken(),
    ch_min: torch.Tensor | None = None,
    ch_max: torch.Tensor | None = None,
    layout: ActLayout | None = None,
) -> IntActs:
    """Quantize ``x[..., K]`` exactly as the fake quantizer does, keeping the codes: rows are
    ``x.reshape(-1, K)``; ``granularity`` is a value (``PerToken()``, ...) or its spelling; ``sample``
    and ``frame`` ranges follow ``layout`` (without one, the first dimension of ``x`` is the sample; see
    :mod:`qdit.quant.activation`)."""
    check_bits(bits)  # the rule's upper bound is these formats' byte per code
    width = x.shape[-1]
    xg, xmin, xmax = activation_range(x, group, granularity, ch_min, ch_max, layout)
    scale, zero = qparams(xmin, xmax, bits, symmetric)
    q = quantize(xg, scale, zero, bits, symmetric)
    offset = ACT_OFFSET if symmetric else 0
    codes = (q + offset).to(torch.uint8).reshape(-1, width)
    groups = num_groups(width, group)
    rows = codes.shape[0]
    # ranges broadcast to xg's leading dims ([..., G, 1] for token and static, ones where a sample or
    # frame range covers several rows): one per row after expanding
    lead = xg.shape[:-2]
    scale = scale.expand(*lead, groups, 1).reshape(rows, groups).contiguous()
    zero = (zero + offset).expand(*lead, groups, 1).reshape(rows, groups).to(torch.int32).contiguous()
    return IntActs(codes, scale, zero)


@dataclass
class IntWeight:
    """A group-quantized weight ``[N, K]`` for the integer kernels.

    ``data`` holds the unsigned codes: 4-bit codes two per byte (``[N, K // 2]``, the even column in the
    low nibble, as :func:`qdit.quant.packing.pack_bits` packs a row), any other width one per byte
    (``[N, K]``). ``zero`` is ``None`` for symmetric weights (zero point ``2^(bits-1)``).
    """

    data: torch.Tensor
    scale: torch.Tensor  # [N, G], float16 or float32
    zero: torch.Tensor | None  # [N, G] integer codes
    bits: int
    in_features: int

    @classmethod
    def from_codes(
        cls, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int
    ) -> IntWeight:
        """From unsigned codes ``[N, K]`` (packed two per byte when ``bits == 4`` and ``K`` is even)."""
        width = codes.shape[1]
        if code_columns(width, bits) != width:
            data = (codes[:, 0::2] | (codes[:, 1::2] << 4)).contiguous()
        else:
            data = codes.contiguous()
        return cls(data, scale, zero, bits, width)

    @classmethod
    def from_qweight(cls, qw: QWeight) -> IntWeight:
        return cls.from_codes(qw.codes, qw.scale, qw.zero, qw.bits)

    @property
    def packed(self) -> bool:
        return self.data.shape[1] != self.in_features

    @property
    def out_features(self) -> int:
        return int(self.data.shape[0])

    @property
    def group(self) -> int:
        return self.in_features // self.scale.shape[1]

    def codes(self) -> torch.Tensor:
        """Unsigned codes ``uint8 [N, K]``."""
        if not self.packed:
            return self.data
        low, high = self.data & 0xF, self.data >> 4
        return torch.stack([low, high], dim=-1).reshape(self.out_features, self.in_features)

    def signed(self) -> torch.Tensor:
        """``w = code - 2^(bits-1)`` as ``int8 [N, K]``."""
        return (self.codes().to(torch.int16) - 2 ** (self.bits - 1)).to(torch.int8)

    def offset(self) -> torch.Tensor:
        """``d_w = 2^(bits-1) - zero`` as ``int32 [N, G]`` (zeros for symmetric weights)."""
        if self.zero is None:
            return torch.zeros(self.scale.shape, dtype=torch.int32, device=self.scale.device)
        return 2 ** (self.bits - 1) - self.zero.to(torch.int32)

    def qweight(self, group_size: int) -> QWeight:
        """Back to a :class:`QWeight` (for fake quantization and saving)."""
        symmetric = self.zero is None
        return QWeight(self.codes(), self.scale, self.zero, self.bits, group_size, symmetric)

    def to_fn(self, fn) -> IntWeight:  # type: ignore[no-untyped-def]
        zero = None if self.zero is None else fn(self.zero)
        return IntWeight(fn(self.data), fn(self.scale), zero, self.bits, self.in_features)


def code_columns(width: int, bits: int) -> int:
    """Bytes per row of stored weight codes: 4-bit codes two per byte (even widths), others one each."""
    return width // 2 if bits == 4 and width % 2 == 0 else width


def block_size(width: int, act_group: int, weight_group: int) -> int:
    """The kernels' K block: the finer of the two groups (0 = the whole width), when one nests in the
    other; raises ``ValueError`` when they do not nest."""
    a, w = act_group or width, weight_group or width
    fine, coarse = min(a, w), max(a, w)
    if not divides(fine, coarse):
        raise ValueError(f"activation group {a} and weight group {w} do not nest")
    return fine


def expand_blocks(t: torch.Tensor, width: int, block: int) -> torch.Tensor:
    """Per-group ``[R, G]`` values repeated to per-block ``[R, width // block]``."""
    reps = (width // block) // t.shape[1]
    return t.repeat_interleave(reps, dim=1) if reps > 1 else t
