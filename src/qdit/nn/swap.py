"""Swapping ``nn.Linear`` layers for :class:`QuantLinear` by per-layer specs, and switching group sizes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from qdit.calib.stats import LayerStats
from qdit.errors import QditError
from qdit.nn.quant_linear import QuantLinear
from qdit.quant.weight import WEIGHT_SCALE_DTYPE
from qdit.recipe import QuantSpec


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``name`` (``setattr`` on its parent)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def quant_layers(model: nn.Module) -> dict[str, QuantLinear]:
    """Every :class:`QuantLinear` of ``model`` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


@torch.no_grad()
def swap_layers(
    model: nn.Module,
    specs: Mapping[str, QuantSpec],
    stats: Mapping[str, LayerStats] | None = None,
    *,
    bank_groups: Iterable[int] | Mapping[str, Iterable[int]] = (),
    bank_bits: Iterable[int] = (),
    scale_dtype: torch.dtype = WEIGHT_SCALE_DTYPE,
    prefix: str = "",
    progress: bool = False,
) -> dict[str, QuantLinear]:
    """Replace each named ``nn.Linear`` by a :class:`QuantLinear` quantized with its spec, in place.

    ``stats`` maps layer names to calibration statistics (required for GPTQ / static / smoothing specs).
    ``bank_groups`` (one list for all layers, or per layer name) and ``bank_bits`` precompute weight
    variants for :func:`set_groups`. ``prefix`` is prepended to the layer names in messages (when
    ``model`` is a submodule). A failure leaves ``model`` as it was.
    """
    modules = dict(model.named_modules())
    for name in specs:
        mod = modules.get(name)
        if mod is None:
            raise QditError(f"the model has no layer {prefix + name!r}")
        if not isinstance(mod, nn.Linear):
            raise QditError(f"layer {prefix + name!r} is a {type(mod).__name__}, not an nn.Linear")
    bits = list(bank_bits)
    shared = None if isinstance(bank_groups, Mapping) else list(bank_groups)
    items = list(specs.items())
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="quantizing", unit="layer", leave=False)
    out: dict[str, QuantLinear] = {}
    try:  # quantize every layer first, so that a failure leaves the model as it was
        for name, spec in items:
            groups = shared if shared is not None else list(bank_groups.get(name, ()))  # type: ignore[union-attr]
            layer_stats = stats.get(name) if stats is not None else None
            out[name] = QuantLinear.from_linear(
                modules[name], spec, layer_stats, bank_groups=groups, bank_bits=bits, scale_dtype=scale_dtype,
                name=prefix + name,
            )  # fmt: skip
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    for name, layer in out.items():
        set_submodule(model, name, layer)
    return out


def set_groups(
    model: nn.Module, groups: Mapping[str, int], *, weights: bool = True, acts: bool = True
) -> None:
    """Switch per-layer group sizes (weight from the layer's bank, activation group directly).

    Every name must be a quantized layer; the switch is all-or-nothing (checked before changing any).
    """
    layers = quant_layers(model)
    for name, g in groups.items():
        layer = layers.get(name)
        if layer is None:
            raise QditError(f"set_groups: {name!r} is not a quantized layer")
        if weights and g != layer.spec.w_group and (layer.spec.w_bits, g) not in layer.bank:
            raise QditError(f"set_groups: layer {name} has no precomputed weight for group {g}")
        if acts and layer.act_quant is not None and g and layer.in_features % g:
            raise QditError(
                f"set_groups: group {g} does not divide the input width {layer.in_features} of {name}"
            )
    for name, g in groups.items():
        layer = layers[name]
        layer.configure(
            w_group=g if weights else None, a_group=g if acts and layer.act_quant is not None else None
        )
