"""Reference statistics, computed once per (data set, extractor) and cached as ``.npz``.

File: ``<cache>/refstats/<dataset>-<extractor>.npz`` (see :func:`qdit.eval.cache.refstats_path`), e.g.
``fashion-mnist-test-inception.npz``, ``fashion-mnist-test-inception-bf16.npz``,
``fashion-mnist-test-inception-fast3.npz`` (modes ``fast`` and ``compile``),
``fashion-mnist-test-fmnist-classifier.npz``; a reference file given by path is keyed ``file-<sha256[:16]>``.
Arrays: ``mu``, ``sigma`` (float64), ``mu_s``/``sigma_s`` (sFID spatial features, Inception only),
``features`` (float32, at most :data:`MAX_FEATURES` rows, a fixed random subset, for precision/recall)
and ``radii`` (their squared k-th-neighbour distances, k = :data:`PR_K`),
``count`` (images used), ``version``, ``extractor`` and ``fingerprint`` (a stale or foreign file, e.g.
after the domain classifier was retrained, is recomputed and replaced).

``python -m qdit.eval.refstats fashion-mnist-test [--inception-mode MODE] [--domain]`` (the command of
:mod:`qdit.eval.fill_refstats`) fills the cache ahead of time;
for a clips reference (``fashion-mnist-clips-test``, a clips ``.npz``) it computes the FVD statistics of
ClipNet, or of I3D with ``--i3d PATH`` (keys ``clipnet``, ``i3d-logits``, ``i3d-pool``).
"""

from __future__ import annotations

import hashlib
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from qdit.eval.cache import refstats_path
from qdit.eval.metrics import feature_stats, knn_radii
from qdit.io.atomic import atomic_path

if TYPE_CHECKING:
    from torch import nn

    from qdit.eval.inception import InceptionFeatures
    from qdit.eval.npz import Reference

REFSTATS_VERSION = 1
MAX_FEATURES = 10_000
PR_K = 3  # neighbourhood size of precision/recall (as the ADM evaluator)


@dataclass
class RefStats:
    mu: np.ndarray
    sigma: np.ndarray
    mu_s: np.ndarray | None = None
    sigma_s: np.ndarray | None = None
    features: np.ndarray | None = None
    radii: np.ndarray | None = None  # squared PR_K-th neighbour distances of ``features``
    count: int = 0


def stats_from_features(
    features: np.ndarray,
    spatial: np.ndarray | None = None,
    *,
    keep_features: bool = True,
    max_features: int = MAX_FEATURES,
    seed: int = 0,
) -> RefStats:
    """Mean/covariance of ``features`` (and ``spatial``), plus up to ``max_features`` feature rows and
    their k-NN radii."""
    mu, sigma = feature_stats(features)
    mu_s = sigma_s = None
    if spatial is not None:
        mu_s, sigma_s = feature_stats(spatial)
    kept = radii = None
    if keep_features:
        kept = np.asarray(features, dtype=np.float32)
        if kept.shape[0] > max_features:
            idx = np.sort(np.random.default_rng(seed).choice(kept.shape[0], max_features, replace=False))
            kept = kept[idx]
        if kept.shape[0] > PR_K:
            radii = knn_radii(kept, PR_K)
    return RefStats(
        mu=mu,
        sigma=sigma,
        mu_s=mu_s,
        sigma_s=sigma_s,
        features=kept,
        radii=radii,
        count=int(features.shape[0]),
    )


def state_fingerprint(model: nn.Module, extra: str = "") -> str:
    """SHA-256 (16 hex) of a state dict (names, shapes, bytes) and ``extra``: cached reference statistics
    of other weights or another preprocessing are stale. Batch-norm step counters are left out: they play
    no part at inference, and a file saved without them must match the same weights saved with them."""
    import torch

    h = hashlib.sha256(extra.encode())
    for k, v in sorted(model.state_dict().items()):
        if k.endswith("num_batches_tracked"):
            continue
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def save_refstats(path, stats: RefStats, *, extractor: str, fingerprint: str) -> None:
    arrays: dict[str, np.ndarray] = {"mu": stats.mu, "sigma": stats.sigma}
    for key in ("mu_s", "sigma_s", "features", "radii"):
        value = getattr(stats, key)
        if value is not None:
            arrays[key] = value
    arrays.update(
        count=np.int64(stats.count),
        version=np.int64(REFSTATS_VERSION),
        extractor=np.str_(extractor),
        fingerprint=np.str_(fingerprint),
    )
    with atomic_path(path, ".npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_refstats(path, *, extractor: str, fingerprint: str) -> RefStats | None:
    """The cached statistics, or None when the file is missing, unreadable, or for another extractor/version."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if (
                int(npz["version"]) != REFSTATS_VERSION
                or str(npz["extractor"]) != extractor
                or str(npz["fingerprint"]) != fingerprint
            ):
                return None
            get = {k: npz[k] for k in ("mu_s", "sigma_s", "features", "radii") if k in npz.files}
            return RefStats(mu=npz["mu"], sigma=npz["sigma"], count=int(npz["count"]), **get)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
        return None


def cached_refstats(
    dataset: str, extractor: str, fingerprint: str, compute: Callable[[], RefStats], *, refresh: bool = False
) -> RefStats:
    """Load ``<cache>/refstats/<dataset>-<extractor>.npz`` if valid, else ``compute()`` and store it."""
    path = refstats_path(dataset, extractor)
    if not refresh:
        hit = load_refstats(path, extractor=extractor, fingerprint=fingerprint)
        if hit is not None:
            return hit
    stats = compute()
    try:
        save_refstats(path, stats, extractor=extractor, fingerprint=fingerprint)
    except OSError as exc:
        warnings.warn(f"could not cache reference statistics at {path}: {exc}", stacklevel=2)
    return stats


def inception_refstats(ref: Reference, extractor: InceptionFeatures, *, refresh: bool = False) -> RefStats:
    """Inception statistics of a reference: from its precomputed arrays, or from its images (cached)."""
    if ref.images is None:
        s = ref.stats
        return RefStats(
            mu=s["mu"],
            sigma=s["sigma"],
            mu_s=s.get("mu_s"),
            sigma_s=s.get("sigma_s"),
            features=s.get("features"),
            radii=s.get("radii"),
        )

    def compute() -> RefStats:
        out = extractor.extract(ref.images, spatial=True, desc=f"reference {ref.name} (once, cached)")
        return stats_from_features(out.pool, out.spatial)

    return cached_refstats(ref.name, extractor.key, extractor.fingerprint, compute, refresh=refresh)


if __name__ == "__main__":  # python -m qdit.eval.refstats (README): the command is qdit.eval.fill_refstats's
    import sys

    from qdit.eval.fill_refstats import main

    sys.exit(main())
