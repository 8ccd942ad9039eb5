"""Driving a model over a few sampling trajectories while calibration hooks record its layers' inputs.

The sampler runs on the facts the model's adapter gives (sample shape, classes, forward, noise
schedule), so the adapters themselves never import the sampler: architecture knowledge stays in
:mod:`qdit.models`, sampling here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from qdit.diffusion.sampler import SamplerConfig, default_labels, generate
from qdit.diffusion.schedule import GaussianDiffusion
from qdit.models.adapter import ModelAdapter, get_adapter


def calibration_runner(
    model: nn.Module,
    adapter: ModelAdapter | None = None,
    *,
    num_samples: int,
    steps: int,
    cfg_scale: float,
    seed: int,
    batch_size: int,
    progress: bool = False,
    cfg_channels: int | None = None,
) -> Callable[[], object]:
    """A callable that drives ``model`` for calibration: the adapter's own driver when it has one (e.g. a
    :class:`~qdit.models.adapter.PatternAdapter`'s callable), else ``num_samples`` DDIM trajectories of
    ``steps`` steps with guidance ``cfg_scale``, balanced labels and per-sample seeds from ``seed``."""
    adapter = adapter if adapter is not None else get_adapter(model)
    own = adapter.calibration_driver(model)
    if own is not None:
        return own
    shape, classes = adapter.sampling_geometry(model)
    adapter.check_cfg_scale(model, cfg_scale)
    labels = default_labels(num_samples, classes)
    sampler = SamplerConfig(steps=steps, method="ddim", cfg_scale=cfg_scale, cfg_channels=cfg_channels)
    schedule = adapter.noise_schedule(model)
    diffusion = GaussianDiffusion.from_scheduler_config(schedule) if schedule else None
    device = next(model.parameters()).device
    fn = adapter.model_fn(model)

    def run() -> torch.Tensor:
        return generate(
            fn, shape, classes, labels, seed, sampler, batch_size=batch_size, device=device,
            diffusion=diffusion, progress=progress, progress_desc="calibration",
        )  # fmt: skip

    return run
