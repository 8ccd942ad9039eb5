"""The public entry points: ``qdit.quantize(model, recipe, calib)`` and :func:`load_model` (every kind
of model the CLI's ``--model`` takes)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from qdit.calib import CalibConfig, Calibration, calibrate
from qdit.calib.capture import calibration_run
from qdit.calib.sequential import quantize_sequential
from qdit.errors import QditError
from qdit.models.adapter import get_adapter
from qdit.nn.swap import LayerFactory, quant_layers, swap_layers
from qdit.recipe import QuantSpec, Recipe


def resolve_specs(model: nn.Module, recipe: Recipe) -> dict[str, QuantSpec]:
    """Per-layer specs of ``recipe`` on ``model`` (its adapter says which linears and which groups)."""
    adapter = get_adapter(model)
    return recipe.resolve(adapter.layer_widths(model), adapter.layer_groups(model))


def quantize(
    model: nn.Module,
    recipe: Recipe | QuantSpec | None = None,
    calib: Calibration | CalibConfig | None = None,
    *,
    layer_factory: LayerFactory | None = None,
    kernel: str = "auto",
    progress: bool = False,
) -> nn.Module:
    """Quantize ``model`` in place by ``recipe`` and return it.

    ``recipe``: a :class:`Recipe`, a :class:`QuantSpec` (applied to the model's default layers), or
    ``None`` (the default :class:`Recipe`). ``calib``: calibration data for specs that need it (GPTQ,
    static activations, smoothing) -- a :class:`Calibration` captured earlier, or a :class:`CalibConfig`
    (or ``None`` for the default one) to capture it now by sampling from the model.
    ``layer_factory(linear, spec, stats, name)`` builds each quantized layer (default
    :meth:`qdit.nn.QuantLinear.from_linear`). ``kernel``: how the quantized layers then run
    (:func:`qdit.nn.freeze`): ``auto`` integer kernels where the recipe allows, ``int`` everywhere,
    ``fake`` the fake-quantization reference. Calibration always runs on fake quantization.
    """
    from qdit.nn.swap import KERNELS, freeze

    if kernel not in KERNELS:
        raise QditError(f"unknown kernel {kernel!r}; use one of {', '.join(KERNELS)}")
    if quant_layers(model):
        raise QditError("the model is already quantized")
    if recipe is None:
        recipe = Recipe()
    elif isinstance(recipe, QuantSpec):
        recipe = Recipe(default=recipe)
    elif not isinstance(recipe, Recipe):
        raise QditError(f"recipe must be a Recipe or QuantSpec, got {type(recipe).__name__}")
    specs = resolve_specs(model, recipe)
    if not specs:
        raise QditError("the recipe selects no layer to quantize")
    # the clip/frame layout of each linear's input is architecture knowledge: the adapter has it, and
    # qdit.io.checkpoint.load asks the same adapter again (the layout is not stored with the weights)
    layouts = get_adapter(model).activation_layout(model)
    need = [n for n, s in specs.items() if s.needs_calibration]
    hess = [n for n, s in specs.items() if s.needs_hessian]
    if need and (calib is None or isinstance(calib, CalibConfig)):
        config = calib if isinstance(calib, CalibConfig) else CalibConfig(progress=progress)
        adapter = get_adapter(model)
        blocks = adapter.block_names(model) if config.sequential else None
        if blocks:
            run = calibration_run(model, config, adapter)

            def swap(
                module: nn.Module, local: Mapping[str, QuantSpec], stats: Mapping | None, prefix: str
            ) -> None:
                swap_layers(module, local, stats, prefix=prefix, factory=layer_factory, layouts=layouts)

            quantize_sequential(
                model, specs, blocks, run, swap, max_rows=config.max_rows, seed=config.seed, progress=progress
            )
            model.qdit_recipe = recipe
            if layer_factory is None:
                freeze(model, kernel)
            return model
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
    model.qdit_recipe = recipe
    if layer_factory is None:  # a custom factory's layers (the search's banks) choose for themselves
        freeze(model, kernel)
    return model


def load_model(
    spec: str,
    arch: str | None = None,
    device: torch.device | str = "cpu",
    kernel: str = "auto",
    verify: bool = True,
) -> nn.Module:
    """A built-in model (``embedded``, ``embedded-video``), a DiT checkpoint file (with ``arch``), a
    diffusers pipeline or transformer folder, or a quantized folder written by ``qdit.save`` (checked
    against its digests unless ``verify`` is off; its layers on the kernel paths ``kernel`` picks, see
    :func:`qdit.nn.choose_kernel`)."""
    from pathlib import Path

    from qdit.io.checkpoint import is_qdit_dir, load
    from qdit.models.registry import is_builtin, load_base_model

    if not is_builtin(spec) and is_qdit_dir(Path(spec)):
        return load(spec, device=device, kernel=kernel, verify=verify)
    return load_base_model(spec, arch, device)
