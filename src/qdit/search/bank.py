"""The search's weight bank: quantized layers that keep alternative weights (other group sizes and bit
widths) so a candidate is a few pointer swaps, not a re-quantization.

Search-only by design: a :class:`BankedQuantLinear` runs fake quantization (its dequantized weights are
cached per variant) unless the search asks for integer kernels (:meth:`BankedQuantLinear.run_integer`:
each variant's kernel layout prepared once and kept), and :func:`qdit.nn.freeze` never touches it. The
plain :class:`~qdit.nn.QuantLinear` of a deployed model knows nothing of banks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from qdit.errors import QditError
from qdit.kernels.formats import block_size
from qdit.kernels.linear import KernelWeight, prepare_weight, supports
from qdit.nn.quant_linear import FAKE, FloatWeight, QuantLinear, WeightKey
from qdit.nn.swap import LayerFactory, quant_layers
from qdit.quant.rules import check_divides, divides
from qdit.quant.stats import LayerStats
from qdit.quant.weight import WEIGHT_SCALE_DTYPE, QWeight
from qdit.recipe import QuantSpec


class BankedQuantLinear(QuantLinear):
    """A :class:`QuantLinear` with precomputed weight variants, switched by :meth:`configure`."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.bank: dict[WeightKey, QWeight] = {}
        self._deq: dict[tuple[WeightKey, torch.dtype], torch.Tensor] = {}
        self.integer = False  # the search's switch: each variant on its compiled integer kernel
        # (weight variant, activation group, activation bits) -> the weight in the AMX kernel's layout,
        # or None where the kernel does not take it
        self._kws: dict[tuple[WeightKey, int, int], KernelWeight | None] = {}

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        linear: nn.Linear,
        spec: QuantSpec,
        stats: LayerStats | None,
        name: str,
        *,
        groups: Iterable[int] = (),
        bits: Iterable[int] = (),
        scale_dtype: torch.dtype = WEIGHT_SCALE_DTYPE,
    ) -> BankedQuantLinear:
        """Quantize ``linear`` by ``spec`` and precompute its weight for every ``bits`` x ``groups``
        (``bits`` defaults to the spec's); group sizes that do not divide the input width are skipped."""
        layer = cls.from_linear(linear, spec, stats, scale_dtype=scale_dtype, name=name)
        assert isinstance(layer, BankedQuantLinear)
        keys = [(b, g) for b in (list(bits) or [spec.w_bits]) for g in groups if divides(g, linear.in_features)]
        own = layer.qweight
        prepared = FloatWeight.prepare(linear, spec, stats, name) if keys else None
        for key in dict.fromkeys(keys):
            if key == layer.weight_key:
                layer.bank[key] = own
            else:
                assert prepared is not None
                layer.bank[key] = prepared.quantize(*key, scale_dtype)
        if layer.bank:
            layer.bank[layer.weight_key] = own
        return layer

    def integer_blocker(self) -> str | None:
        return "a search layer with a weight bank (the search switches its kernel; never frozen to one)"

    def set_qweight(self, qw: QWeight) -> None:
        """Make ``qw`` the weight, and the bank's variant for its bits and group (a new weight for a
        banked key replaces that variant: switching away and back returns to ``qw``)."""
        self._set_weight(qw)
        if getattr(self, "integer", False):
            self._sync_kernel()

    def _set_weight(self, qw: QWeight) -> None:
        key = (qw.bits, qw.group_size)
        bank = getattr(self, "bank", {})
        if bank.get(key) is not qw:  # a new weight for this key: the variant's caches are stale
            for k in [k for k in getattr(self, "_deq", {}) if k[0] == key]:
                del self._deq[k]
            for k in [k for k in getattr(self, "_kws", {}) if k[0] == key]:
                del self._kws[k]
            if key in bank:
                bank[key] = qw
        super().set_qweight(qw)

    def set_kernel(self, path: str, consume: bool = False) -> None:
        if path != FAKE:
            raise QditError(
                f"{self.name or 'layer'}: a search layer with a weight bank is not frozen to a kernel "
                "(the search switches it: run_integer)"
            )
        self._kw = None  # the plain codes are always kept
        self.kernel = FAKE

    @torch.no_grad()
    def run_integer(self, on: bool = True) -> None:
        """Run every variant's product through the AMX integer kernel (the one qdit quantize deploys on
        CPU), the variant's weight prepared in its layout once and kept; ``on=False``: fake quantization
        again. A variant the kernel does not take (its block size, a GPU, a layer that cannot run an
        integer kernel: weight-only, groups that do not nest) stays on fake quantization. The integer
        path has no gradient: passes that need one go through fake quantization (see
        :meth:`QuantLinear.forward`)."""
        self.integer = on
        self._sync_kernel()

    def _sync_kernel(self) -> None:
        if not self.integer or QuantLinear.integer_blocker(self) is not None:
            self.set_kernel(FAKE)
            return
        act = self.act_spec()
        assert act is not None
        key = (self.weight_key, act.group, act.bits)
        if key not in self._kws:
            weight = self.int_weight()
            # AMX or nothing, decided by the shape alone (not by a timing, which could differ between
            # runs and ranks): the PyTorch emulation is slower than fake quantization, and on a GPU fake
            # quantization's float products are not known to be slower than the Triton kernel
            block = block_size(self.in_features, act.group, self.spec.w_group)
            amx = supports("amx", block, self.weight_scale.device)
            self._kws[key] = prepare_weight(weight, act.group, "amx") if amx else None
        kw = self._kws[key]
        if kw is None:
            self.set_kernel(FAKE)
        else:
            self.kernel, self._kw = "amx", kw

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.weight_dtype
        key = (self.weight_key, dtype)
        cached = self._deq.get(key)
        if cached is None or cached.device != self.weight_scale.device:
            cached = self._deq[key] = super().dequantized_weight(dtype)
        return cached

    def precompute(self, dtype: torch.dtype | None = None) -> None:
        """Dequantize every banked weight now, so that later switches cost nothing."""
        dtype = dtype or self.weight_dtype
        for key, qw in self.bank.items():
            self._deq.setdefault((key, dtype), qw.dequantize(dtype))

    def configure(  # type: ignore[override]
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
                    f"(precomputed: {have})"
                )
            self._set_weight(self.bank[key])
        super().configure(a_group=a_group, a_bits=a_bits)
        self._sync_kernel()  # once, for the new weight and activation group together

    def set_weight_group(self, group: int) -> None:
        self.configure(w_group=group)

    def set_group(self, group: int) -> None:
        """The search's gene: one group size for the weight and the input activations."""
        self.configure(w_group=group, a_group=group if self.act_quant is not None else None)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> BankedQuantLinear:  # type: ignore[override]
        super()._apply(fn, recurse)
        # like the active weight's scales, the banked ones follow device moves but keep their dtype
        device = fn(torch.empty(0, device=self.weight_scale.device)).device
        self.bank = {k: q.apply(lambda t: t.to(device)) for k, q in self.bank.items()}
        self._deq.clear()
        self._kws.clear()  # kernel layouts belong to their device: prepared again when next used
        self._sync_kernel()
        return self

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(*args, **kwargs)
        # the active variant's values may have changed: its cached dequantized weight and layout are stale
        self._deq = {k: v for k, v in self._deq.items() if k[0] != self.weight_key}
        self._kws = {k: v for k, v in self._kws.items() if k[0] != self.weight_key}
        self._sync_kernel()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", bank={len(self.bank)}"


def bank_factory(
    groups: Iterable[int] | Mapping[str, Iterable[int]], bits: Iterable[int] = ()
) -> LayerFactory:
    """A layer factory for :func:`qdit.quantize` that builds :class:`BankedQuantLinear` layers with
    ``groups`` (one list for all layers, or per qualified layer name) x ``bits``."""
    shared = None if isinstance(groups, Mapping) else list(groups)
    bits = list(bits)

    def make(linear: nn.Linear, spec: QuantSpec, stats: LayerStats | None, name: str) -> QuantLinear:
        own = shared if shared is not None else list(groups.get(name, ()))  # type: ignore[union-attr]
        return BankedQuantLinear.build(linear, spec, stats, name, groups=own, bits=bits)

    return make


def set_groups(model: nn.Module, groups: Mapping[str, int], *, weights: bool = True, acts: bool = True) -> None:
    """Switch per-layer group sizes (weight from the layer's bank, activation group directly).

    Every name must be a banked quantized layer; the switch is all-or-nothing (checked before changing any).
    """
    layers = quant_layers(model)
    for name, g in groups.items():
        layer = layers.get(name)
        if not isinstance(layer, BankedQuantLinear):
            raise QditError(f"set_groups: {name!r} is not a quantized layer with a weight bank")
        if weights and g != layer.spec.w_group and (layer.spec.w_bits, g) not in layer.bank:
            raise QditError(f"set_groups: layer {name} has no precomputed weight for group {g}")
        if acts and layer.act_quant is not None:
            check_divides(g, layer.in_features, "group", name, QditError)
    for name, g in groups.items():
        layer = layers[name]
        assert isinstance(layer, BankedQuantLinear)
        layer.configure(w_group=g if weights else None, a_group=g if acts and layer.act_quant is not None else None)
