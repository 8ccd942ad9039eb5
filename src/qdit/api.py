"""The public entry points, one per stage of the data flow: :func:`load_model` (every kind of model the
CLI's ``--model`` takes), :func:`search_recipe` (a searched :class:`Recipe`), ``qdit.quantize(model,
recipe, calib)``, :func:`sample` (images or clips) and :func:`evaluate` (metrics of samples); ``qdit.save``
/ ``qdit.load`` are :mod:`qdit.io.checkpoint`'s."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from qdit.calib import CalibConfig, Calibration
from qdit.calib.quantize import quantize_layers, resolve_specs
from qdit.errors import QditError
from qdit.models.adapter import get_adapter
from qdit.nn.swap import KERNELS, LayerFactory, freeze, fuse, quant_layers
from qdit.recipe import QuantSpec, Recipe

if TYPE_CHECKING:
    from qdit.diffusion.distributed import DistContext
    from qdit.diffusion.sampler import SamplerConfig
    from qdit.eval.features import FeatureSpace
    from qdit.eval.npz import Reference, Samples
    from qdit.search.driver import SearchConfig

__all__ = ["evaluate", "load_model", "quantize", "resolve_specs", "sample", "search_recipe"]


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
        fuse(model, get_adapter(model).activation_pairs(model))
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
    from qdit.io.checkpoint import is_qdit_dir, load
    from qdit.models.registry import is_builtin, load_base_model

    if not is_builtin(spec) and is_qdit_dir(Path(spec)):
        return load(spec, device=device, kernel=kernel, verify=verify)
    return load_base_model(spec, arch, device)


def search_recipe(
    model: nn.Module,
    features: FeatureSpace | str = "auto",
    config: SearchConfig | None = None,
    *,
    reference: str | None = None,
    state_path: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    device: torch.device | str = "cpu",
    model_name: str = "model",
    inception_mode: str | None = None,
    **settings: Any,
) -> tuple[Recipe, dict]:
    """Search per-layer group sizes (and bits) of ``model`` (not changed: a copy is quantized); returns
    the best :class:`Recipe` (``qdit.quantize(model, recipe)`` applies it) and the search's report.

    ``features``: a :class:`~qdit.eval.features.FeatureSpace`, or a name (``domain``, ``inception``,
    ``clipnet``; ``auto``: by the model's sample shape) scored against ``reference`` (a named data
    set or a reference ``.npz``; default: the features' own, none for Inception), Inception's computed in
    ``inception_mode`` (default that of ``qdit eval``: :data:`qdit.eval.inception.DEFAULT_MODE`). ``config``: a
    :class:`~qdit.search.driver.SearchConfig`, or its fields as keywords (``method="full"``,
    ``num_samples=16``, ...). ``state_path``: a state file the search can be resumed from (``resume``).
    Under ``torch.distributed`` the candidates are spread over the ranks.
    """
    from qdit.eval.features import DEFAULT_REFERENCES, default_features, feature_space
    from qdit.search.driver import SearchConfig, search_groups
    from qdit.search.fitness import model_geometry

    if config is not None and settings:
        raise QditError("give a SearchConfig or its fields as keywords, not both")
    config = config if config is not None else SearchConfig(**settings)
    if isinstance(features, str):
        kind = default_features(model_geometry(model)[0]) if features == "auto" else features
        fp_only = config.fitness is not None and config.fitness.reference == "fp"
        ref = reference if reference is not None else DEFAULT_REFERENCES.get(kind)
        if ref is None and not fp_only:
            raise QditError(
                f"{kind} features need a reference: give reference= (a reference .npz or a named data set)"
            )
        if inception_mode is not None and kind != "inception":
            raise QditError(f"inception_mode is for Inception features; these are {kind} features")
        features = feature_space(kind, ref, device=device, inception_mode=inception_mode)
    outcome = search_groups(
        model, features, config, state_path=state_path, resume=resume, progress=progress,
        model_name=model_name, device=device,
    )  # fmt: skip
    return outcome.recipe, outcome.report


def sample(
    model: nn.Module,
    num: int,
    seed: int = 0,
    config: SamplerConfig | None = None,
    *,
    labels: Sequence[int] | np.ndarray | None = None,
    batch_size: int = 64,
    decode: bool = True,
    progress: bool = False,
    precision: str = "fp32",
    dist: DistContext | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``num`` samples of ``model`` (float or quantized) and their labels: uint8 images ``[N, H, W, C]``, or
    clips ``[N, T, H, W, C]`` of a video model (see :func:`qdit.diffusion.sampler.sample_images`).

    ``config``: steps, method and guidance (default: :class:`~qdit.diffusion.sampler.SamplerConfig`'s, with
    images clipped to [-1, 1] and latents not). ``labels``: the class of each sample (default: balanced).
    ``decode``: a latent model's samples go through its VAE (its adapter's ``decoder``), when it has one.
    ``precision``: ``fp32``, or ``bf16`` autocast of the model. ``dist``: the ranks to shard the samples
    over (:func:`qdit.diffusion.distributed.init_distributed`); every rank calls this, the main rank gets
    all the samples and the others ``None``.
    """
    from qdit.diffusion.sampler import SamplerConfig, precision_context, sample_images
    from qdit.models.adapter import get_adapter

    decoder = get_adapter(model).decoder(model) if decode else None
    config = config or SamplerConfig(clip_denoised=decoder is None)
    device = dist.device if dist is not None else next(model.parameters(), torch.empty(0)).device
    with torch.inference_mode(), precision_context(precision, device):
        result = sample_images(
            model, num, seed, config, labels, batch_size, progress=progress, ctx=dist, decode=decoder
        )
    assert result is not None or (dist is not None and not dist.is_main)  # one process: the main rank
    return result  # type: ignore[return-value]  # None only on the other ranks of ``dist``


def evaluate(
    samples: Samples | np.ndarray | str | Path,
    reference: Reference | str,
    metrics: Sequence[str] | None = None,
    *,
    labels: np.ndarray | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    **options: Any,
) -> dict[str, float]:
    """Metrics of ``samples`` (a samples ``.npz``, a :class:`~qdit.eval.npz.Samples`, or uint8 images / clips
    with ``labels``) against ``reference`` (a named data set, a reference ``.npz`` or a loaded
    :class:`~qdit.eval.npz.Reference`). ``metrics``: default as ``qdit eval``'s (FID, sFID, precision,
    recall, the domain metrics where they apply; FVD and clip metrics for clips). ``options`` go to
    :func:`qdit.eval.evaluate.evaluate`."""
    from qdit.eval.evaluate import default_metrics
    from qdit.eval.evaluate import evaluate as evaluate_samples
    from qdit.eval.npz import Samples, load_reference, load_samples

    if isinstance(samples, (str, Path)):
        samples = load_samples(samples)
    elif not isinstance(samples, Samples):
        samples = Samples(np.asarray(samples), None if labels is None else np.asarray(labels, dtype=np.int64))
    ref = load_reference(reference) if isinstance(reference, str) else reference
    chosen = list(metrics) if metrics is not None else default_metrics(samples)
    return evaluate_samples(samples, ref, chosen, device=device, progress=progress, **options)
