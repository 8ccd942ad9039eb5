"""The public entry points: ``qdit.quantize(model, recipe, calib)`` and :func:`load_model` (every kind
of model the CLI's ``--model`` takes)."""

from __future__ import annotations

import torch
from torch import nn

from qdit.calib import CalibConfig, Calibration
from qdit.calib.quantize import quantize_layers, resolve_specs
from qdit.errors import QditError
from qdit.nn.swap import KERNELS, LayerFactory, freeze, quant_layers
from qdit.recipe import QuantSpec, Recipe

__all__ = ["load_model", "quantize", "resolve_specs"]


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
    quantize_layers(model, specs, calib, layer_factory=layer_factory, progress=progress)
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
