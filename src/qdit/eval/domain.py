"""Domain metrics for 28x28 grayscale (Fashion-MNIST) samples, from qdit's small Fashion-MNIST classifier.

Much cheaper than Inception features and closer to the data: the classifier sees the images at their
own size. Metrics:

- ``domain_fd``: Fréchet distance between the classifier's penultimate features of samples and reference;
- ``class_acc``: fraction of samples that the classifier assigns to the class they were generated for
  (needs ``labels`` in the samples file);
- ``domain_is``: Inception Score computed with the classifier's softmax (10 splits; 1..10).

The classifier interface (``qdit.models.classifier.load_classifier``): input float ``[N, 1, 28, 28]`` in
``[0, 1]``; ``model.features(x) -> [N, D]``; ``model(x) -> [N, 10]`` logits. Any module with that
interface can be passed instead (tests use a small random one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from qdit.errors import QditError
from qdit.eval.metrics import feature_stats, frechet_distance, inception_score, softmax
from qdit.eval.npz import check_images, check_labels
from qdit.eval.refstats import RefStats, cached_refstats, state_fingerprint, stats_from_features

if TYPE_CHECKING:
    from qdit.eval.npz import Reference

DOMAIN_SIZE = 28
DOMAIN_CLASSES = 10  # Fashion-MNIST


@dataclass
class DomainOutput:
    features: np.ndarray  # [N, D] float32
    logits: np.ndarray  # [N, K] float32


def check_domain_images(images: np.ndarray, what: str = "images") -> np.ndarray:
    """uint8 ``[N, 28, 28, 1]`` (or ``[N, 28, 28]``); else QditError."""
    arr = check_images(images, what)
    if arr.shape[1:] != (DOMAIN_SIZE, DOMAIN_SIZE, 1):
        raise QditError(
            f"domain metrics need 28x28 grayscale images [N, 28, 28, 1] (Fashion-MNIST), {what} are "
            f"{list(arr.shape)}"
        )
    return arr


def check_domain_labels(labels: np.ndarray, n: int, what: str = "labels") -> np.ndarray:
    """Integer ``[n]`` class ids of Fashion-MNIST (0..9); else QditError (``class_acc`` of a label the
    classifier cannot output would be a silent 0)."""
    arr = check_labels(labels, n, what)
    bad = arr[(arr < 0) | (arr >= DOMAIN_CLASSES)]
    if bad.size:
        raise QditError(
            f"{what} must be class ids in [0, {DOMAIN_CLASSES - 1}] for class_acc (Fashion-MNIST), "
            f"got {int(bad[0])} ({bad.size} out of range)"
        )
    return arr


def _load_default_classifier() -> nn.Module:
    try:
        from qdit.models.classifier import load_classifier

        return load_classifier()
    except (ImportError, OSError, ValueError, RuntimeError) as exc:
        raise QditError(
            f"domain metrics need qdit's Fashion-MNIST classifier, which could not be loaded: {exc}"
        ) from exc


class DomainFeatures:
    """Batched classifier features and logits of 28x28 grayscale uint8 images."""

    name = "fmnist-classifier"

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        batch_size: int = 500,
        device: str | torch.device = "cpu",
        progress: bool = True,
    ) -> None:
        if batch_size < 1:
            raise QditError(f"batch size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.model = (model if model is not None else _load_default_classifier()).to(self.device).eval()
        self.batch_size = batch_size
        self.progress = progress
        self._fingerprint: str | None = None

    @property
    def key(self) -> str:
        return self.name

    @property
    def fingerprint(self) -> str:
        """SHA-256 (16 hex) of the classifier's state dict: cached statistics of another classifier are stale."""
        if self._fingerprint is None:
            self._fingerprint = state_fingerprint(self.model)
        return self._fingerprint

    @torch.inference_mode()
    def extract(
        self, images: np.ndarray, desc: str = "classifier", *, features: bool = True, logits: bool = True
    ) -> DomainOutput:
        """Features ``[N, D]`` and logits ``[N, K]`` (an output not asked for is an empty ``[N, 0]`` array)."""
        from tqdm import tqdm

        arr = check_domain_images(images)
        feats: list[np.ndarray] = []
        outs: list[np.ndarray] = []
        with tqdm(total=arr.shape[0], desc=desc, unit="img", disable=not self.progress, leave=False) as bar:
            for start in range(0, arr.shape[0], self.batch_size):
                chunk = np.array(arr[start : start + self.batch_size, :, :, 0], copy=True)
                x = torch.from_numpy(chunk).to(self.device).float().div_(255.0).unsqueeze(1)
                if features:
                    feats.append(self.model.features(x).float().cpu().numpy())
                if logits:
                    outs.append(self.model(x).float().cpu().numpy())
                bar.update(len(chunk))
        empty = np.zeros((arr.shape[0], 0), np.float32)
        return DomainOutput(
            features=np.concatenate(feats) if feats else empty, logits=np.concatenate(outs) if outs else empty
        )


def domain_refstats(ref: Reference, domain: DomainFeatures, *, refresh: bool = False) -> RefStats:
    """Classifier-feature statistics of a reference with images (cached like the Inception ones)."""
    if ref.images is None:
        raise QditError(f"domain metrics need reference images; {ref.source} has only precomputed statistics")
    images = check_domain_images(ref.images, f"reference {ref.source}")

    def compute() -> RefStats:
        return stats_from_features(
            domain.extract(images, desc=f"reference {ref.name} (once, cached)", logits=False).features,
            keep_features=False,
        )

    return cached_refstats(ref.name, domain.key, domain.fingerprint, compute, refresh=refresh)


def domain_metrics(
    images: np.ndarray,
    labels: np.ndarray | None,
    ref: Reference | None,
    domain: DomainFeatures,
    metrics: list[str] | tuple[str, ...] = ("domain_fd", "class_acc", "domain_is"),
) -> dict[str, float]:
    """The requested domain metrics of uint8 samples (``ref`` is needed for ``domain_fd`` only)."""
    unknown = set(metrics) - {"domain_fd", "class_acc", "domain_is"}
    if unknown:
        raise QditError(f"unknown domain metrics: {', '.join(sorted(unknown))}")
    arr = check_domain_images(images, "samples")
    if "class_acc" in metrics:
        if labels is None:
            raise QditError("class_acc needs the class labels of the samples ('labels' in the samples .npz)")
        labels = check_domain_labels(labels, arr.shape[0])
    ref_stats = None
    if "domain_fd" in metrics:
        if ref is None:
            raise QditError("domain_fd needs a reference")
        ref_stats = domain_refstats(ref, domain)
    want_logits = "class_acc" in metrics or "domain_is" in metrics
    out = domain.extract(arr, desc="samples (classifier)", features=ref_stats is not None, logits=want_logits)
    result: dict[str, float] = {}
    if ref_stats is not None:
        mu, sigma = feature_stats(out.features)
        result["domain_fd"] = frechet_distance(mu, sigma, ref_stats.mu, ref_stats.sigma)
    if "class_acc" in metrics:
        result["class_acc"] = float(np.mean(out.logits.argmax(axis=1) == labels))
    if "domain_is" in metrics:
        result["domain_is"], result["domain_is_std"] = inception_score(softmax(out.logits), splits=10)
    return result
