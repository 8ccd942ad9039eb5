"""``QuantLinear``: a linear layer with quantized weights and (optionally) quantized input activations.

Weights are stored quantized (``uint8`` codes plus per-(row, group) scales and zero points); the fake
mode dequantizes them once for the matmul and caches the result. The input activations go through an
:class:`ActQuantizer` (dynamic per token, dynamic per sample, or static calibrated ranges), after an
optional SmoothQuant division by per-channel factors that were folded into the weights.

Group sizes can be switched without re-quantizing: :meth:`QuantLinear.set_group` picks a weight from
the layer's *bank* (weights precomputed for several group sizes / bit widths) and changes the
activation group, which is free for dynamic quantizers and for static ones (their ranges are kept per
input channel and reduced per group at run time).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from qdit.calib.stats import LayerStats
from qdit.errors import QditError
from qdit.quant.activation import activation_range
from qdit.quant.gptq import gptq_quantize
from qdit.quant.primitives import check_bits, fake_quantize_range, num_groups
from qdit.quant.weight import WEIGHT_SCALE_DTYPE, QWeight, quantize_weight
from qdit.recipe import ACT_GRANULARITIES, QuantSpec


class ActQuantizer(nn.Module):
    """Fake quantization of activations ``x[..., C]`` in groups of ``group`` channels (0 = all ``C``).

    * ``token``: one range per token (row of ``x.reshape(-1, C)``) and group, computed at run time;
    * ``sample``: one range per sample (first dim) and group over all of the sample's tokens;
    * ``static``: one range per group from calibrated per-channel ``ch_min`` / ``ch_max`` (group 0:
      one range for the whole tensor).

    Every granularity is independent of the other samples in the batch.
    """

    def __init__(
        self,
        width: int,
        bits: int,
        group: int = 0,
        granularity: str = "token",
        symmetric: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if granularity not in ACT_GRANULARITIES:
            raise ValueError(f"unknown activation granularity {granularity!r}")
        self.width = width
        self.bits = check_bits(bits)
        num_groups(width, group)
        self.group = group
        self.granularity = granularity
        self.symmetric = symmetric
        static = granularity == "static"
        self.register_buffer("ch_min", torch.zeros(width, device=device) if static else None)
        self.register_buffer("ch_max", torch.zeros(width, device=device) if static else None)

    def set_group(self, group: int) -> None:
        num_groups(self.width, group)
        self.group = group

    @torch.no_grad()
    def set_range(self, ch_min: torch.Tensor, ch_max: torch.Tensor) -> None:
        """Calibrated per-channel range (static granularity)."""
        if self.granularity != "static":
            raise ValueError("set_range applies to static activation quantizers only")
        self.ch_min = ch_min.detach().float().reshape(self.width).to(self.ch_min.device).clone()
        self.ch_max = ch_max.detach().float().reshape(self.width).to(self.ch_max.device).clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            # straight-through: quantized values forward, the identity's gradient backward
            with torch.no_grad():
                q = self._quantize(x)
            return x + (q - x.detach())
        return self._quantize(x)

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        xg, xmin, xmax = activation_range(x, self.group, self.granularity, self.ch_min, self.ch_max)
        return fake_quantize_range(xg, xmin, xmax, self.bits, self.symmetric).reshape(x.shape).to(x.dtype)

    def extra_repr(self) -> str:
        sym = ", symmetric" if self.symmetric else ""
        return f"A{self.bits}, group={self.group}, {self.granularity}{sym}"


def smooth_factors(act_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant factors ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` (1 where undefined)."""
    s = act_absmax.float().pow(alpha) / w_absmax.float().pow(1.0 - alpha)
    s = torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))
    return s.clamp(min=1e-5)


WeightKey = tuple[int, int]  # (bits, group)


class QuantLinear(nn.Module):
    """Drop-in replacement for ``nn.Linear`` (same ``forward(x)``), built with :meth:`from_linear`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        spec: QuantSpec,
        bias: bool = True,
        *,
        weight_dtype: torch.dtype = torch.float32,
        scale_dtype: torch.dtype = WEIGHT_SCALE_DTYPE,
        device: torch.device | str | None = None,
        name: str = "",
    ) -> None:
        super().__init__()
        spec.check_width(name or "QuantLinear", in_features)
        self.in_features = in_features
        self.out_features = out_features
        self.spec = spec
        self.weight_dtype = weight_dtype
        self.scale_dtype = scale_dtype
        self.name = name
        groups = num_groups(in_features, spec.w_group)
        self.register_buffer(
            "weight_codes", torch.zeros(out_features, in_features, dtype=torch.uint8, device=device)
        )
        self.register_buffer(
            "weight_scale", torch.ones(out_features, groups, dtype=scale_dtype, device=device)
        )
        zero = (
            None if spec.w_symmetric else torch.zeros(out_features, groups, dtype=torch.uint8, device=device)
        )
        self.register_buffer("weight_zero", zero)
        if bias:
            self.bias = nn.Parameter(
                torch.zeros(out_features, dtype=weight_dtype, device=device), requires_grad=False
            )
        else:
            self.register_parameter("bias", None)
        smooth = torch.ones(in_features, device=device) if spec.smooth_alpha is not None else None
        self.register_buffer("smooth", smooth)
        self.act_quant: ActQuantizer | None = None
        if spec.a_bits is not None:
            self.act_quant = ActQuantizer(
                in_features, spec.a_bits, spec.a_group, spec.act_granularity, spec.a_symmetric, device
            )
        self.cache_weight = True
        self.bank: dict[WeightKey, QWeight] = {}
        self._deq: dict[WeightKey, torch.Tensor] = {}

    # --- construction ------------------------------------------------------------------------
    @classmethod
    @torch.no_grad()
    def from_linear(
        cls,
        linear: nn.Linear,
        spec: QuantSpec,
        stats: LayerStats | None = None,
        *,
        bank_groups: Iterable[int] = (),
        bank_bits: Iterable[int] = (),
        scale_dtype: torch.dtype = WEIGHT_SCALE_DTYPE,
        name: str = "",
    ) -> QuantLinear:
        """Quantize ``linear`` by ``spec``. ``stats`` (calibrated inputs) are needed for GPTQ, static
        activations and smoothing. ``bank_groups`` x ``bank_bits`` (``bank_bits`` defaults to the spec's
        bits) are extra weight variants precomputed for :meth:`set_group`; group sizes that do not divide
        the input width are skipped."""
        label = name or "layer"
        if spec.needs_calibration and stats is None:
            raise QditError(f"{label}: {spec.label()} needs calibration statistics")
        w = linear.weight.detach().float()
        smooth = None
        if spec.smooth_alpha is not None:
            assert stats is not None
            smooth = smooth_factors(stats.absmax.to(w.device), w.abs().amax(0), float(spec.smooth_alpha))
            w = w * smooth
        hessian = None
        if spec.needs_hessian:
            assert stats is not None
            if stats.hessian is None:
                raise QditError(f"{label}: GPTQ needs a Hessian, but calibration did not collect one for it")
            hessian = stats.hessian.to(w.device)
            if smooth is not None:
                hessian = hessian / (smooth.double()[:, None] * smooth.double()[None, :])

        def make(bits: int, group: int) -> QWeight:
            if spec.weight_method == "gptq":
                assert hessian is not None
                return gptq_quantize(w, hessian, bits, group, spec.w_symmetric, scale_dtype=scale_dtype)
            return quantize_weight(w, bits, group, spec.w_symmetric, spec.weight_method, scale_dtype)

        layer = cls(
            linear.in_features, linear.out_features, spec, linear.bias is not None,
            weight_dtype=linear.weight.dtype, scale_dtype=scale_dtype, device=w.device, name=name,
        )  # fmt: skip
        layer.set_qweight(make(spec.w_bits, spec.w_group))
        bits_list = list(bank_bits) or [spec.w_bits]
        keys = [(b, g) for b in bits_list for g in bank_groups if g == 0 or linear.in_features % g == 0]
        for key in dict.fromkeys(keys):
            layer.bank[key] = layer.qweight if key == layer.weight_key else make(*key)
        if layer.bank:
            layer.bank[layer.weight_key] = layer.qweight
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        if smooth is not None:
            layer.smooth.copy_(smooth)
        if layer.act_quant is not None and spec.act_granularity == "static":
            assert stats is not None
            ch_min, ch_max = stats.ch_min.to(w.device), stats.ch_max.to(w.device)
            if smooth is not None:
                ch_min, ch_max = ch_min / smooth, ch_max / smooth
            layer.act_quant.set_range(ch_min, ch_max)
        return layer

    # --- the stored weight -------------------------------------------------------------------
    @property
    def weight_key(self) -> WeightKey:
        return (self.spec.w_bits, self.spec.w_group)

    @property
    def qweight(self) -> QWeight:
        """The active quantized weight (views of this module's buffers)."""
        return QWeight(
            self.weight_codes, self.weight_scale, self.weight_zero, self.spec.w_bits, self.spec.w_group,
            self.spec.w_symmetric,
        )  # fmt: skip

    def set_qweight(self, qw: QWeight, keep_cache: bool = False) -> None:
        """Make ``qw`` the active weight (its bits, group and symmetry become the spec's)."""
        if tuple(qw.codes.shape) != (self.out_features, self.in_features):
            raise ValueError(
                f"weight codes of shape {tuple(qw.codes.shape)} do not fit {self.out_features}x{self.in_features}"
            )
        if qw.scale.shape != (self.out_features, num_groups(self.in_features, qw.group_size)):
            raise ValueError(
                f"weight scale of shape {tuple(qw.scale.shape)} does not fit group {qw.group_size}"
            )
        self.weight_codes = qw.codes
        self.weight_scale = qw.scale
        self.weight_zero = qw.zero
        self.spec = replace(self.spec, w_bits=qw.bits, w_group=qw.group_size, w_symmetric=qw.symmetric)
        if not keep_cache:
            self._deq.pop(self.weight_key, None)

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``W_hat`` in ``dtype`` (default: the original weight dtype), cached when ``cache_weight``."""
        dtype = dtype or self.weight_dtype
        key = self.weight_key
        cached = self._deq.get(key)
        if cached is not None and cached.dtype == dtype and cached.device == self.weight_codes.device:
            return cached
        w = self.qweight.dequantize(dtype)
        if self.cache_weight:
            self._deq[key] = w
        return w

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (with smoothing, the smoothed ``W * s`` that multiplies ``x / s``)."""
        return self.dequantized_weight()

    def clear_cache(self) -> None:
        self._deq.clear()

    def precompute(self, dtype: torch.dtype | None = None) -> None:
        """Dequantize every banked weight now, so that later :meth:`set_group` calls cost nothing."""
        active = self.qweight
        for qw in self.bank.values():
            self.set_qweight(qw, keep_cache=True)
            self.dequantized_weight(dtype)
        self.set_qweight(active, keep_cache=True)

    # --- switching group sizes / bits ---------------------------------------------------------
    def configure(
        self,
        *,
        w_group: int | None = None,
        a_group: int | None = None,
        w_bits: int | None = None,
        a_bits: int | None = None,
    ) -> None:
        """Switch the weight (to a banked variant) and/or the activation quantizer's group and bits."""
        key = (
            self.spec.w_bits if w_bits is None else w_bits,
            self.spec.w_group if w_group is None else w_group,
        )
        if key != self.weight_key:
            if key not in self.bank:
                have = ", ".join(f"W{b}/g{g}" for b, g in sorted(self.bank)) or "none"
                raise QditError(
                    f"{self.name or 'QuantLinear'}: no precomputed weight for W{key[0]} group {key[1]} "
                    f"(precomputed: {have}); quantize with bank_groups/bank_bits to switch"
                )
            self.set_qweight(self.bank[key], keep_cache=True)
        if a_group is not None or a_bits is not None:
            if self.act_quant is None:
                raise QditError(f"{self.name or 'QuantLinear'}: activations are not quantized")
            if a_group is not None:
                if a_group and self.in_features % a_group:
                    raise QditError(
                        f"layer {self.name or 'QuantLinear'}: activation group {a_group} does not divide its "
                        f"input width {self.in_features}"
                    )
                self.act_quant.set_group(a_group)
            if a_bits is not None:
                self.act_quant.bits = check_bits(a_bits)
            self.spec = replace(self.spec, a_group=self.act_quant.group, a_bits=self.act_quant.bits)

    def set_weight_group(self, group: int) -> None:
        self.configure(w_group=group)

    def set_act_group(self, group: int) -> None:
        self.configure(a_group=group)

    def set_group(self, group: int) -> None:
        """The search's gene: one group size for the weight and the input activations."""
        self.configure(w_group=group, a_group=group if self.act_quant is not None else None)

    # --- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if self.smooth is not None or self.act_quant is not None:
            xf = x.float()
            if self.smooth is not None:
                xf = xf / self.smooth
            if self.act_quant is not None:
                xf = self.act_quant(xf)
            x = xf.to(dtype)
        bias = self.bias.to(dtype) if self.bias is not None else None
        return F.linear(x, self.dequantized_weight(dtype), bias)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> QuantLinear:  # type: ignore[override]
        super()._apply(fn, recurse)
        self.weight_dtype = fn(torch.empty(0, dtype=self.weight_dtype)).dtype  # follows .half(), .to(dtype)
        active = self.weight_key
        self.bank = {k: (self.qweight if k == active else q.apply(fn)) for k, q in self.bank.items()}
        self._deq.clear()
        return self

    def extra_repr(self) -> str:
        s = self.spec
        sym = " sym" if s.w_symmetric else ""
        smooth = f", smooth={s.smooth_alpha:g}" if s.smooth_alpha is not None else ""
        bank = f", bank={len(self.bank)}" if self.bank else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"W{s.w_bits}{sym} group={s.w_group} {s.weight_method}{smooth}{bank}"
        )
