"""Quantizing a model's linears by per-layer specs: calibrate the layers whose spec needs it (block by
block when the adapter lists the blocks, each block calibrated on the outputs of the blocks already
quantized), then swap each linear for its quantized layer.

The facade (:func:`qdit.quantize`) and the search (which swaps in layers with weight banks) both build on
this, so the search needs nothing from the layer above it.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from qdit.calib.capture import CalibConfig, calibrate, calibration_run
from qdit.calib.sequential import quantize_sequential
from qdit.calib.stats import Calibration
from qdit.errors import QditError
from qdit.models.adapter import get_adapter
from qdit.nn.swap import LayerFactory, swap_layers
from qdit.recipe import QuantSpec, Recipe


def resolve_specs(model: nn.Module, recipe: Recipe) -> dict[str, QuantSpec]:
    """Per-layer specs of ``recipe`` on ``model`` (its adapter says which linears and which groups)."""
    adapter = get_adapter(model)
    return recipe.resolve(adapter.layer_widths(model), adapter.layer_groups(model))


def quantize_layers(
    model: nn.Module,
    specs: Mapping[str, QuantSpec],
    calib: Calibration | CalibConfig | None = None,
    *,
    layer_factory: LayerFactory | None = None,
    progress: bool = False,
) -> None:
    """Swap the linears named in ``specs`` for quantized layers, in place.

    ``calib``: for specs that need calibration (GPTQ, static activations, smoothing), a
    :class:`Calibration` captured earlier, or a :class:`CalibConfig` (``None``: the default one) to
    capture it now by sampling from the model. ``layer_factory(linear, spec, stats, name)`` builds each
    quantized layer (default :meth:`qdit.nn.QuantLinear.from_linear`). The layers stay on fake
    quantization (the kernels are chosen afterwards, by :func:`qdit.nn.freeze`).
    """
    adapter = get_adapter(model)
    # the clip/frame layout of each linear's input is architecture knowledge: the adapter has it, and
    # qdit.io.checkpoint.load asks the same adapter again (the layout is not stored with the weights)
    layouts = adapter.activation_layout(model)
    need = [n for n, s in specs.items() if s.needs_calibration]
    hess = [n for n, s in specs.items() if s.needs_hessian]
    if need and (calib is None or isinstance(calib, CalibConfig)):
        config = calib if isinstance(calib, CalibConfig) else CalibConfig(progress=progress)
        blocks = adapter.block_names(model) if config.sequential else None
        if blocks:
            run = calibration_run(model, config, adapter)

            def swap(
                module: nn.Module, local: Mapping[str, QuantSpec], stats: Mapping | None, prefix: str
            ) -> None:
                swap_layers(module, local, stats, prefix=prefix, factory=layer_factory, layouts=layouts)

            quantize_sequential(
                model, specs, blocks, run, swap, max_rows=config.max_rows, seed=config.seed,
                progress=progress,
            )  # fmt: skip
            return
        calib = calibrate(model, need, config, hessian_layers=hess, adapter=adapter)
    stats: Calibration | None = None
    if need:
        if not isinstance(calib, Calibration):
            raise QditError(f"calib must be a Calibration or CalibConfig, got {type(calib).__name__}")
        missing = [n for n in need if n not in calib]
        if missing:
            raise QditError(f"the calibration data has no layer {missing[0]!r} ({len(missing)} missing)")
        no_h = [n for n in hess if calib[n].hessian is None]
        if no_h:
            raise QditError(f"the calibration data has no Hessian for {no_h[0]!r} (needed by GPTQ)")
        stats = calib
    swap_layers(model, specs, stats, progress=progress, factory=layer_factory, layouts=layouts)
