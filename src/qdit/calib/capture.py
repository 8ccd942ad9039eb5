"""Capturing layer inputs across diffusion timesteps with forward pre-hooks (``forward`` is never patched)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from qdit.calib.stats import Calibration, LayerStats
from qdit.diffusion.calibration import calibration_runner
from qdit.errors import QditError
from qdit.models.adapter import ModelAdapter, get_adapter


@dataclass
class CalibConfig:
    """How calibration drives the model: ``num_samples`` DDIM trajectories of ``steps`` steps with
    classifier-free guidance ``cfg_scale`` (so conditional and unconditional inputs are both seen),
    drawn with ``seed``; at most ``max_rows`` input rows are kept per layer (Hessians use all rows).

    ``sequential``: when the model adapter lists the model's blocks, quantize block by block, each
    calibrated on the outputs of the already-quantized blocks (:mod:`qdit.calib.sequential`); this keeps
    every block's inputs for all trajectories in memory (samples x 2 x steps x tokens x width floats).
    """

    num_samples: int = 16
    steps: int = 25
    cfg_scale: float = 1.5
    cfg_channels: int | None = None  # guided channels (None: all; see qdit.diffusion.sampler.guided)
    seed: int = 1
    batch_size: int = 32
    max_rows: int = 2048
    sequential: bool = True
    progress: bool = False

    def __post_init__(self) -> None:
        for name in ("num_samples", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise QditError(f"calibration {name} must be >= 1, got {getattr(self, name)}")
        if self.max_rows < 0:
            raise QditError(f"calibration max_rows must be >= 0, got {self.max_rows}")


def capture(
    model: nn.Module,
    layers: Iterable[str],
    run: Callable[[], object],
    *,
    hessian_layers: Iterable[str] = (),
    max_rows: int = 2048,
    seed: int = 0,
) -> Calibration:
    """Record the inputs of the named submodules while ``run()`` drives the model.

    A forward pre-hook on each layer updates its :class:`LayerStats`; the hooks are removed afterwards,
    even when ``run`` fails. ``hessian_layers`` (a subset of ``layers``) also accumulate ``x x^T``.
    """
    modules = dict(model.named_modules())
    names = list(dict.fromkeys(layers))
    hess = set(hessian_layers)
    for name in [*names, *hess]:
        if name not in modules:
            raise QditError(f"calibration: the model has no layer {name!r}")
    hess_unknown = hess - set(names)
    names += sorted(hess_unknown)
    stats: dict[str, LayerStats] = {}
    handles = []
    for i, name in enumerate(names):
        module = modules[name]
        width = getattr(module, "in_features", None)
        if not isinstance(width, int):
            raise QditError(f"calibration: layer {name!r} ({type(module).__name__}) has no in_features")
        stats[name] = LayerStats(width, hessian=name in hess, max_rows=max_rows, seed=seed + i)

        def hook(mod: nn.Module, args: tuple, _stats: LayerStats = stats[name]) -> None:
            if args and isinstance(args[0], torch.Tensor):
                _stats.update(args[0])

        handles.append(module.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    empty = [n for n, s in stats.items() if s.rows_seen == 0]
    if empty:
        raise QditError(f"calibration: layer {empty[0]!r} never ran ({len(empty)} layers without inputs)")
    return Calibration(stats)


def calibrate(
    model: nn.Module,
    layers: Iterable[str],
    config: CalibConfig | None = None,
    *,
    hessian_layers: Iterable[str] = (),
    adapter: object | None = None,
) -> Calibration:
    """Capture ``layers``' inputs over ``config.num_samples`` sampling trajectories of ``model``.

    The trajectories come from :func:`qdit.diffusion.calibration.calibration_runner` (the sampler on the
    facts of the model's adapter, or the adapter's own driver).
    """
    config = config or CalibConfig()
    run = calibration_run(model, config, adapter)
    calib = capture(
        model, layers, run, hessian_layers=hessian_layers, max_rows=config.max_rows, seed=config.seed
    )
    calib.meta.update(asdict(config))
    return calib


def calibration_run(
    model: nn.Module, config: CalibConfig, adapter: object | None = None
) -> Callable[[], object]:
    """The sampling run of ``config`` for ``model`` (with its adapter, or ``adapter``)."""
    ad = adapter if isinstance(adapter, ModelAdapter) else get_adapter(model)
    return calibration_runner(
        model, ad, num_samples=config.num_samples, steps=config.steps, cfg_scale=config.cfg_scale,
        **({"cfg_channels": config.cfg_channels} if config.cfg_channels is not None else {}), seed=config.seed, batch_size=config.batch_size, progress=config.progress,
    )  # fmt: skip
