"""Feature spaces: how a set of samples is scored against reference statistics (what a search's fitness
and its gradient sensitivity measure samples with).

A :class:`FeatureSpace` is one interface over the feature networks of :mod:`qdit.eval`: ``extract``
(uint8 samples to features), the reference statistics in its space, the Fréchet distance to them, and
(where the network allows) the same features differentiable in model-space samples. Build one with
:func:`feature_space` by name, or with the constructor of each network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from qdit.errors import QditError
from qdit.eval.metrics import feature_stats, frechet_distance

FEATURES = ("domain", "inception", "clipnet")
# the reference each feature space is scored against by default (Inception has none: give one)
DEFAULT_REFERENCES = {"domain": "fashion-mnist-test", "clipnet": "fashion-mnist-clips-test"}


def default_features(sample_shape: tuple[int, ...]) -> str:
    """The features a model's samples are scored in by default: ClipNet for clips, the domain classifier
    for 28x28 grayscale images, Inception otherwise."""
    if len(sample_shape) == 4:
        return "clipnet"
    return "domain" if tuple(sample_shape) == (1, 28, 28) else "inception"


FeatureFn = Callable[[np.ndarray], np.ndarray]  # uint8 [N, H, W, C] (clips [N, T, H, W, C]) -> float [N, D]


@dataclass
class FeatureSpace:
    """How samples are scored: a feature extractor and the reference statistics in its space."""

    name: str
    extract: FeatureFn
    mu: np.ndarray | None = None  # reference statistics (None: only distances between sample sets)
    sigma: np.ndarray | None = None
    # the same features, differentiable, from model-space images [N, C, H, W] (clips [N, C, T, H, W]) in
    # [-1, 1] (None: the extractor cannot be differentiated, so the gradient sensitivity is not available)
    differentiable: Callable[[torch.Tensor], torch.Tensor] | None = None

    def distance(self, features: np.ndarray) -> float:
        if len(features) < 2:
            raise QditError("the Fréchet distance needs at least 2 samples")
        if self.mu is None or self.sigma is None:
            raise QditError(f"{self.name}: no reference statistics (give a reference data set)")
        mu, sigma = feature_stats(features)
        return float(frechet_distance(mu, sigma, self.mu, self.sigma))


def domain_feature_space(reference: str = "fashion-mnist-test") -> FeatureSpace:
    """The domain Fréchet distance (qdit's Fashion-MNIST classifier features) against ``reference``."""
    from qdit.eval.domain import DomainFeatures, domain_refstats
    from qdit.eval.npz import load_reference

    domain = DomainFeatures(progress=False)
    stats = domain_refstats(load_reference(reference), domain)
    classifier = domain.model
    for p in classifier.parameters():
        p.requires_grad_(False)

    def differentiable(x: torch.Tensor) -> torch.Tensor:  # as uint8 / 255, without the rounding
        return classifier.features((x.float().clamp(-1, 1) + 1) / 2)

    return FeatureSpace(
        "domain_fd", lambda images: domain.extract(images).features, stats.mu, stats.sigma, differentiable
    )


def inception_feature_space(
    reference: str | None,
    bf16: bool = False,
    device: str | torch.device = "cpu",
    mode: str | None = None,
) -> FeatureSpace:
    """Inception FID against ``reference`` (a named data set or a reference ``.npz``; ``None``: no
    reference statistics, for distances to the float model's samples only), its features computed in
    ``mode`` (:data:`qdit.eval.inception.INCEPTION_MODES`; default ``bf16`` with ``bf16``, else
    :data:`~qdit.eval.inception.DEFAULT_MODE`, as ``qdit eval``). The space is named ``fid`` for the fp32
    network, else after the mode's features (``fid-fast3``): values of different modes differ slightly,
    and a saved search must not mix them."""
    from qdit.eval.inception import DEFAULT_MODE, InceptionFeatures

    if bf16 and mode not in (None, "bf16"):
        raise QditError(f"bf16=True asks for Inception mode 'bf16', but mode is {mode!r}; give one of them")
    inc = InceptionFeatures(mode=mode or ("bf16" if bf16 else DEFAULT_MODE), device=device, progress=False)
    name = "fid" if inc.mode == "fp32" else "fid-" + inc.key.removeprefix(f"{inc.name}-")
    # the gradient sensitivity differentiates the fp32 network (a faster mode's fitness is close, not equal)
    if reference is None:
        return FeatureSpace(
            name, lambda images: inc.extract(images).pool, differentiable=inc.differentiable_pool
        )
    from qdit.eval.npz import load_reference
    from qdit.eval.refstats import inception_refstats

    stats = inception_refstats(load_reference(reference), inc)
    return FeatureSpace(
        name, lambda images: inc.extract(images).pool, stats.mu, stats.sigma, inc.differentiable_pool
    )


def video_feature_space(reference: str | None = "fashion-mnist-clips-test") -> FeatureSpace:
    """FVD on ClipNet's clip features (qdit's moving-garment clips) against ``reference`` clips (a named
    clip set or a clips ``.npz``; ``None``: distances to the float model's samples only)."""
    from qdit.eval.videofeat import VideoFeatures

    video = VideoFeatures(progress=False)
    net = video.model
    for p in net.parameters():
        p.requires_grad_(False)

    def extract(clips: np.ndarray) -> np.ndarray:
        return video.extract(clips, frames=False).clip_features

    def differentiable(x: torch.Tensor) -> torch.Tensor:  # [N, 1, T, H, W] in [-1, 1] -> uint8 / 255 scale
        return net((x.float().clamp(-1, 1) + 1).div(2).transpose(1, 2)).clip_features

    if reference is None:
        return FeatureSpace("fvd", extract, differentiable=differentiable)
    from qdit.eval.npz import load_reference
    from qdit.eval.video import video_refstats

    stats = video_refstats(load_reference(reference), video)
    return FeatureSpace("fvd", extract, stats.mu, stats.sigma, differentiable)


def inception_mode_of(space_name: str) -> str | None:
    """The Inception mode behind a feature space's name (:func:`inception_feature_space`'s naming):
    ``fid`` fp32, ``fid-bf16`` bf16, ``fid-fast<version>`` fast; None for other spaces."""
    if space_name == "fid":
        return "fp32"
    if space_name == "fid-bf16":
        return "bf16"
    return "fast" if space_name.startswith("fid-fast") else None


def feature_space(
    kind: str,
    reference: str | None,
    bf16: bool = False,
    device: str | torch.device = "cpu",
    inception_mode: str | None = None,
) -> FeatureSpace:
    """The feature space ``kind`` (one of :data:`FEATURES`) against ``reference`` (``None``: no reference
    statistics, for distances to the float model's samples only; the domain features need one);
    ``inception_mode``: see :func:`inception_feature_space`."""
    if kind == "domain":
        if reference is None:
            raise QditError("the domain features need a reference data set")
        return domain_feature_space(reference)
    if kind == "inception":
        return inception_feature_space(reference, bf16=bf16, device=device, mode=inception_mode)
    if kind == "clipnet":
        return video_feature_space(reference)
    raise QditError(f"unknown features {kind!r}; use one of {', '.join(FEATURES)}")
