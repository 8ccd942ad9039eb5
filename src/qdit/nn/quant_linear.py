"""``QuantLinear``: a linear layer with quantized weights and (optionally) quantized input activations.

The weight lives only as integer codes (4-bit codes two per byte, other widths one per byte) plus
per-(row, group) scales and zero points: never as a float copy. The input activations go through an
:class:`ActQuantizer` (dynamic per token, per sample or per frame, or static calibrated ranges), after an
optional division by per-channel balancing factors (SmoothQuant or PTQ4DiT-style salience balancing,
:mod:`qdit.quant.balance`) that were folded into the weight columns before quantizing them.

Two ways to run the product:

* ``fake`` (the reference, what calibration uses, and what the search's gradients pass through): the
  codes are dequantized for each call and the quantized activations go through a float matmul;
* an integer kernel path of :mod:`qdit.kernels` (``amx``, ``torch``, ``triton``), chosen by
  :meth:`QuantLinear.set_kernel` or :func:`qdit.nn.freeze`: integer activations times integer
  weights with the scales applied per K block. A path may keep the weight in its own layout (the AMX
  tile stream), which then replaces the plain codes: one copy, and the plain codes come back exactly
  when saved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from qdit.errors import QditError
from qdit.kernels.formats import IntWeight, block_size, code_columns
from qdit.kernels.linear import (
    ActQuant,
    AdaNorm,
    KernelWeight,
    apply_activation,
    best_path,
    gated_residual,
    int_linear,
    prepare_weight,
    supports,
)
from qdit.quant.activation import ActLayout, activation_range, as_layout, clip_shape
from qdit.quant.balance import csb_factors, smooth_factors
from qdit.quant.finite import check_finite
from qdit.quant.methods import quantize_by_method
from qdit.quant.primitives import fake_quantize_range, num_groups
from qdit.quant.rules import ActGranularity, PerToken, check_bits, check_divides, parse_act_granularity
from qdit.quant.stats import LayerStats
from qdit.quant.weight import WEIGHT_SCALE_DTYPE, QWeight
from qdit.recipe import QuantSpec


class ActQuantizer(nn.Module):
    """Fake quantization of activations ``x[..., C]`` in groups of ``group`` channels (0 = all ``C``).

    ``granularity`` is a value of :mod:`qdit.quant.rules` or its spelling (kept as the value):

    * ``PerToken()`` (``token``): one range per token (row of ``x.reshape(-1, C)``) and group, computed
      at run time;
    * ``PerSample()`` (``sample``): one range per sample and group over all of the sample's tokens (per
      clip for video);
    * ``PerFrame()`` (``frame``): one range per frame of each sample and group over that frame's tokens;
    * ``Static()`` (``static``): one range per group from calibrated per-channel ``ch_min`` / ``ch_max``
      (group 0: one range for the whole tensor).

    What a sample and a frame are comes from ``layout`` (:class:`qdit.quant.activation.ActLayout`), set by
    whoever swaps the layers in from the model's adapter (:meth:`set_layout`); without one a sample is the
    first dimension of ``x`` and ``frame`` equals ``sample``. The layout belongs to the architecture,
    not to the quantized weights, so it is not part of the state dict.

    Every granularity is independent of the other samples in the batch.
    """

    def __init__(
        self,
        width: int,
        bits: int,
        group: int = 0,
        granularity: ActGranularity | str = PerToken(),
        symmetric: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        gran = parse_act_granularity(granularity, "activation granularity")
        self.width = width
        self.bits = check_bits(bits)
        num_groups(width, group)
        self.group = group
        self.granularity: ActGranularity = gran
        self.symmetric = symmetric
        self.layout: ActLayout | None = None
        static = not gran.dynamic  # calibrated ranges
        self.register_buffer("ch_min", torch.zeros(width, device=device) if static else None)
        self.register_buffer("ch_max", torch.zeros(width, device=device) if static else None)

    def set_group(self, group: int) -> None:
        num_groups(self.width, group)
        self.group = group

    def set_layout(self, layout: ActLayout | tuple | None) -> None:
        """How this layer's inputs split into clips and frames (``None``: the first dim is the sample)."""
        self.layout = as_layout(layout)

    @torch.no_grad()
    def set_range(self, ch_min: torch.Tensor, ch_max: torch.Tensor) -> None:
        """Calibrated per-channel range (static granularity)."""
        if self.granularity.dynamic:
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
        xg, xmin, xmax = activation_range(x, self.group, self.granularity, self.ch_min, self.ch_max, self.layout)
        return fake_quantize_range(xg, xmin, xmax, self.bits, self.symmetric).reshape(x.shape).to(x.dtype)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> ActQuantizer:  # type: ignore[override]
        with keep_dtypes(self, ("ch_min", "ch_max")):
            super()._apply(fn, recurse)
        return self

    def extra_repr(self) -> str:
        sym = ", symmetric" if self.symmetric else ""
        layout = f", {self.layout.order} x{self.layout.frames}" if self.layout is not None else ""
        return f"A{self.bits}, group={self.group}, {self.granularity.spelling}{sym}{layout}"


@contextmanager
def keep_dtypes(module: nn.Module, names: tuple[str, ...]) -> Iterator[None]:
    """Around ``module._apply``: the named buffers follow device moves but keep their dtype (their
    exact values are part of the quantized format, so ``.half()`` or ``.bfloat16()`` must not round them)."""
    before = {n: getattr(module, n) for n in names}
    yield
    for name, old in before.items():
        new = getattr(module, name)
        if old is not None and new is not None and new.dtype != old.dtype:
            setattr(module, name, old.to(new.device))


WeightKey = tuple[int, int]  # (bits, group)
FAKE = "fake"


@dataclass
class FloatWeight:
    """What quantizing a linear's weight starts from: the float weight (balanced), the balancing
    factors (``smooth``) and the (balanced) GPTQ Hessian. :meth:`quantize` makes one :class:`QWeight` of it, so
    callers that want several variants of one layer (the search) share the preparation."""

    weight: torch.Tensor
    smooth: torch.Tensor | None
    hessian: torch.Tensor | None
    spec: QuantSpec

    @classmethod
    @torch.no_grad()
    def prepare(
        cls, linear: nn.Linear, spec: QuantSpec, stats: LayerStats | None = None, name: str = ""
    ) -> FloatWeight:
        label = name or "layer"
        if spec.needs_calibration and stats is None:
            raise QditError(f"{label}: {spec.label()} needs calibration statistics")
        check_finite(linear.weight.detach(), f"{label}.weight")
        if linear.bias is not None:
            check_finite(linear.bias.detach(), f"{label}.bias")
        w = linear.weight.detach().float()
        smooth = None
        if spec.balance is not None:
            assert stats is not None
            w_absmax = w.abs().amax(0)
            if spec.balance == "csb":
                smooth = csb_factors(stats.step_absmax.to(w.device), w_absmax)
            else:
                assert spec.smooth_alpha is not None
                smooth = smooth_factors(stats.absmax.to(w.device), w_absmax, float(spec.smooth_alpha))
            w = w * smooth
        hessian = None
        if spec.needs_hessian:
            assert stats is not None
            if stats.hessian is None:
                raise QditError(f"{label}: GPTQ needs a Hessian, but calibration did not collect one for it")
            hessian = stats.hessian.to(w.device)
            if smooth is not None:
                hessian = hessian / (smooth.double()[:, None] * smooth.double()[None, :])
        return cls(w, smooth, hessian, spec)

    def quantize(self, bits: int, group: int, scale_dtype: torch.dtype = WEIGHT_SCALE_DTYPE) -> QWeight:
        spec = self.spec
        return quantize_by_method(
            self.weight, spec.weight_method, bits, group, spec.w_symmetric, self.hessian, scale_dtype
        )


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
            "weight_codes",
            torch.zeros(out_features, code_columns(in_features, spec.w_bits), dtype=torch.uint8, device=device),
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
        smooth = torch.ones(in_features, device=device) if spec.balance is not None else None
        self.register_buffer("smooth", smooth)
        self.act_quant: ActQuantizer | None = None
        if spec.a_bits is not None:
            self.act_quant = ActQuantizer(
                in_features, spec.a_bits, spec.a_group, spec.activation_granularity, spec.a_symmetric, device
            )
        self.kernel = FAKE  # the path that runs the product: "fake" or a qdit.kernels path
        self._kw: KernelWeight | None = None  # the weight in that path's layout
        # an activation fused onto the output (qdit.kernels.linear.ACTIVATIONS; see qdit.nn.fuse):
        # applied on every path, by the AMX kernel before it writes the output
        self.activation: str | None = None
        # whether a model may hand this layer the work next to its product: its gated residual (forward's
        # residual / gate) and its input's adaLN transform (ada_norm); qdit.nn.unfuse turns it off
        self.fusion = True

    # --- construction ------------------------------------------------------------------------
    @classmethod
    @torch.no_grad()
    def from_linear(
        cls,
        linear: nn.Linear,
        spec: QuantSpec,
        stats: LayerStats | None = None,
        *,
        scale_dtype: torch.dtype = WEIGHT_SCALE_DTYPE,
        name: str = "",
    ) -> QuantLinear:
        """Quantize ``linear`` by ``spec``. ``stats`` (calibrated inputs) are needed for GPTQ, static
        activations and balancing."""
        prepared = FloatWeight.prepare(linear, spec, stats, name)
        w = prepared.weight
        layer = cls(
            linear.in_features, linear.out_features, spec, linear.bias is not None,
            weight_dtype=linear.weight.dtype, scale_dtype=scale_dtype, device=w.device, name=name,
        )  # fmt: skip
        layer.set_qweight(prepared.quantize(spec.w_bits, spec.w_group, scale_dtype))
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        if prepared.smooth is not None:
            layer.smooth.copy_(prepared.smooth)
        if layer.act_quant is not None and not spec.activation_granularity.dynamic:
            assert stats is not None
            ch_min, ch_max = stats.ch_min.to(w.device), stats.ch_max.to(w.device)
            if prepared.smooth is not None:
                ch_min, ch_max = ch_min / prepared.smooth, ch_max / prepared.smooth
            layer.act_quant.set_range(ch_min, ch_max)
        return layer

    # --- the stored weight -------------------------------------------------------------------
    @property
    def weight_key(self) -> WeightKey:
        return (self.spec.w_bits, self.spec.w_group)

    def int_weight(self) -> IntWeight:
        """The integer weight (codes, scales, zero points), from whichever layout holds it."""
        if self.weight_codes is None:
            assert self._kw is not None
            return self._kw.int_weight()
        return IntWeight(self.weight_codes, self.weight_scale, self.weight_zero, self.spec.w_bits, self.in_features)

    @property
    def qweight(self) -> QWeight:
        """The quantized weight as plain unsigned codes ``[out, in]``."""
        return self.int_weight().qweight(self.spec.w_group)

    def set_qweight(self, qw: QWeight) -> None:
        """Make ``qw`` the weight (its bits, group and symmetry become the spec's); back to ``fake``."""
        if tuple(qw.codes.shape) != (self.out_features, self.in_features):
            raise ValueError(
                f"weight codes of shape {tuple(qw.codes.shape)} do not fit {self.out_features}x{self.in_features}"
            )
        if qw.scale.shape != (self.out_features, num_groups(self.in_features, qw.group_size)):
            raise ValueError(
                f"weight scale of shape {tuple(qw.scale.shape)} does not fit group {qw.group_size}"
            )
        iw = IntWeight.from_qweight(qw)
        self._kw = None
        self.kernel = FAKE
        self.weight_codes = iw.data
        self.weight_scale = qw.scale
        self.weight_zero = qw.zero
        self.spec = replace(self.spec, w_bits=qw.bits, w_group=qw.group_size, w_symmetric=qw.symmetric)

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``W_hat`` in ``dtype`` (default: the original weight dtype), computed now (never kept)."""
        return self.qweight.dequantize(dtype or self.weight_dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (with balancing, the balanced ``W * s`` that multiplies ``x / s``)."""
        return self.dequantized_weight()

    def weight_nbytes(self) -> int:
        """Bytes held for the weight in its current layout (codes or kernel layout, scales, zeros)."""
        if self._kw is not None:
            return self._kw.nbytes()
        return sum(t.numel() * t.element_size() for t in (self.weight_codes, self.weight_scale, self.weight_zero) if t is not None)

    def _hooked(self) -> bool:
        """Whether forward hooks watch this layer (its own, or global ones): they must see its plain
        input and output, so nothing is fused into it meanwhile."""
        from torch.nn.modules import module as _m

        return bool(
            self._forward_hooks or self._forward_pre_hooks
            or _m._global_forward_hooks or _m._global_forward_pre_hooks
        )  # fmt: skip

    def takes_gated_residual(self) -> bool:
        """Whether a model should hand this layer its gated residual (``forward(x, residual, gate)``):
        on an integer kernel, with no fused activation and no forward hooks watching the layer, unless
        :func:`qdit.nn.unfuse` turned it off."""
        return self.fusion and self.kernel != FAKE and self.activation is None and not self._hooked()

    def takes_ada_norm(self) -> bool:
        """Whether a model should hand this layer its input before adaLN's norm and modulation
        (``forward(x, ada_norm=...)``, :class:`qdit.kernels.linear.AdaNorm`): on the AMX kernel (the one
        that applies it as it quantizes; the others would apply it first anyway), without balancing
        (which divides the transformed input) and with no forward hooks watching the layer, unless
        :func:`qdit.nn.unfuse` turned it off."""
        return self.fusion and self.kernel == "amx" and self.smooth is None and not self._hooked()

    # --- the kernel path ---------------------------------------------------------------------
    def act_spec(self) -> ActQuant | None:
        aq = self.act_quant
        return None if aq is None else ActQuant(aq.bits, aq.group, aq.symmetric, aq.granularity, aq.layout)

    def set_layout(self, layout: ActLayout | tuple | None) -> None:
        """The clip/frame layout of this layer's inputs (see :class:`ActQuantizer`); weight-only layers
        have no activation ranges and ignore it."""
        if self.act_quant is not None:
            self.act_quant.set_layout(layout)

    def integer_blocker(self) -> str | None:
        """Why this layer cannot run through an integer kernel (``None`` when it can)."""
        if self.act_quant is None:
            return "weight-only quantization (float activations)"
        try:
            block_size(self.in_features, self.act_quant.group, self.spec.w_group)
        except ValueError:
            return f"activation group {self.act_quant.group} and weight group {self.spec.w_group} do not nest"
        return None

    @torch.no_grad()
    def set_kernel(self, path: str, consume: bool = False) -> None:
        """Run the product through ``path`` (``fake`` or a path of :mod:`qdit.kernels.linear`). An
        integer path that keeps its own layout replaces the plain codes (one copy of the weight);
        ``consume``: nothing else holds this layer's codes tensor, so that layout may be built in its
        memory (what :func:`qdit.load` does)."""
        if path == self.kernel:
            return
        weight = self.int_weight()
        if path == FAKE:
            self._kw = None
            self.weight_codes, self.weight_scale, self.weight_zero = weight.data, weight.scale, weight.zero
            self.kernel = FAKE
            return
        why = self.integer_blocker()
        if why is not None:
            raise QditError(f"{self.name or 'QuantLinear'} cannot run an integer kernel: {why}")
        assert self.act_quant is not None
        kw = prepare_weight(weight, self.act_quant.group, path, consume=consume)
        self._kw = kw
        self.kernel = path
        if kw.weight is None:  # the kernel's layout is now the only copy
            self.weight_codes = None
        else:
            self.weight_codes, self.weight_scale, self.weight_zero = weight.data, weight.scale, weight.zero

    # --- switching activation groups / bits ---------------------------------------------------
    def configure(self, *, a_group: int | None = None, a_bits: int | None = None) -> None:
        """Change the activation quantizer's group and/or bits (free: they are computed at run time)."""
        if a_group is None and a_bits is None:
            return
        if self.act_quant is None:
            raise QditError(f"{self.name or 'QuantLinear'}: activations are not quantized")
        if a_group is not None:
            check_divides(a_group, self.in_features, "activation group", self.name or "QuantLinear", QditError)
        if a_bits is not None:
            check_bits(a_bits)
        kernel = self.kernel
        self.set_kernel(FAKE)
        if a_group is not None:
            self.act_quant.set_group(a_group)
        if a_bits is not None:
            self.act_quant.bits = a_bits
        self.spec = replace(self.spec, a_group=self.act_quant.group, a_bits=self.act_quant.bits)
        if kernel != FAKE:
            self._restore_kernel(kernel)

    def set_act_group(self, group: int) -> None:
        self.configure(a_group=group)

    # --- forward -----------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None = None,
        gate: torch.Tensor | None = None,
        ada_norm: AdaNorm | None = None,
    ) -> torch.Tensor:
        """``linear(x)``, through :attr:`activation` when one is fused; with ``residual`` and ``gate``
        (a DiT block's gated residual) ``residual + gate * linear(x)``, the gate one row per sample
        (:func:`qdit.kernels.linear.gated_residual`), which the AMX kernel adds before it writes; with
        ``ada_norm`` the layer's input is ``ada_norm.apply(x)``, which the AMX kernel computes as it
        quantizes the rows."""
        if ada_norm is not None and (
            self._kw is None
            or self.smooth is not None
            or (torch.is_grad_enabled() and any(t.requires_grad for t in (x, ada_norm.shift, ada_norm.scale)))
        ):  # the integer path has no gradient: through the shift and scale neither
            x, ada_norm = ada_norm.apply(x), None
        aq = self.act_quant
        if aq is not None and aq.layout is not None and aq.granularity.layout_aware:
            try:  # checked here so that the message names the layer whose input does not fit
                clip_shape(x.shape, aq.layout)
            except ValueError as exc:
                raise ValueError(f"layer {self.name or 'QuantLinear'}: {exc}") from None
        dtype = x.dtype
        # the integer path has no gradient: through the gated residual neither
        grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, residual, gate))
        if self._kw is not None and not grad:
            xs = x if self.smooth is None else x.float() / self.smooth  # quantized from float32, as fake does
            act = self.act_spec()
            assert act is not None and self.act_quant is not None
            y = int_linear(
                xs, self._kw, act, self.bias, self.act_quant.ch_min, self.act_quant.ch_max, self.activation,
                residual, gate, ada_norm,
            )  # fmt: skip
            # a gated residual keeps the promoted dtype of x + gate * out (an fp32 residual stream stays
            # fp32); int_linear gives the transformed input's dtype
            return y if residual is not None or ada_norm is not None else y.to(dtype)
        if self.smooth is not None or self.act_quant is not None:
            xf = x.float()
            if self.smooth is not None:
                xf = xf / self.smooth
            if self.act_quant is not None:
                xf = self.act_quant(xf)
            x = xf.to(dtype)
        bias = self.bias.to(dtype) if self.bias is not None else None
        y = apply_activation(F.linear(x, self.dequantized_weight(dtype), bias), self.activation)
        if residual is None and gate is None:
            return y
        if residual is None or gate is None or self.activation is not None:
            raise ValueError("a gated residual needs both residual and gate, and excludes an output activation")
        return gated_residual(y, residual, gate)

    def _restore_kernel(self, kernel: str) -> None:
        """Back on an integer path after a change (device, groups, weights): ``kernel`` where it still
        runs this layer, else the best path that does, else fake quantization."""
        if self.integer_blocker() is not None:
            return
        assert self.act_quant is not None
        device = self.weight_scale.device
        if not supports(kernel, block_size(self.in_features, self.act_quant.group, self.spec.w_group), device):
            act = self.act_spec()
            assert act is not None
            kernel = best_path(self.int_weight(), act, device)
        self.set_kernel(kernel)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> QuantLinear:  # type: ignore[override]
        kernel = self.kernel
        device = self.weight_scale.device
        moved = fn(torch.empty(0, device=device)).device != device
        if moved:  # a kernel layout belongs to its device: back to plain codes, re-prepared after the move
            self.set_kernel(FAKE)
        with keep_dtypes(self, ("weight_scale", "smooth")):  # part of the format: .half() must not round them
            super()._apply(fn, recurse)
        self.weight_dtype = fn(torch.empty(0, dtype=self.weight_dtype)).dtype  # follows .half(), .to(dtype)
        if kernel != FAKE and moved:
            self._restore_kernel(kernel)
        elif self._kw is not None and self._kw.weight is not None:  # its tensors are the buffers: follow them
            self._kw = prepare_weight(self.int_weight(), self.act_quant.group if self.act_quant else 0, kernel)
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[no-untyped-def]
        # loading replaces the plain buffers: go back to them first, and rebuild the kernel's layout after
        kernel = self.kernel
        self.set_kernel(FAKE)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if kernel != FAKE:
            self._restore_kernel(kernel)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:  # type: ignore[override]
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.weight_codes is None:  # held in a kernel layout: the state dict still has the plain codes
            weight = self.int_weight()
            destination[prefix + "weight_codes"] = weight.data

    def extra_repr(self) -> str:
        s = self.spec
        sym = " sym" if s.w_symmetric else ""
        smooth = ""
        if s.balance == "smoothquant":
            smooth = f", smooth={s.smooth_alpha:g}"
        elif s.balance is not None:
            smooth = f", balance={s.balance}"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"W{s.w_bits}{sym} group={s.w_group} {s.weight_method}{smooth}, kernel={self.kernel}"
            + (f", activation={self.activation}" if self.activation else "")
        )

