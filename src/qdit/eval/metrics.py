"""Sample-quality metrics on feature vectors: Fréchet distance (FID, sFID, domain FD), Inception Score,
improved precision and recall. Pure numpy (and scipy for ``xlogy``); no torch, no files.
"""

from __future__ import annotations

import numpy as np


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and covariance ``[D, D]`` (unbiased, rows are samples), in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(
            f"need features [N, D] with N >= 2 to estimate a covariance, got shape {list(f.shape)}"
        )
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _cholesky(a: np.ndarray) -> np.ndarray | None:
    try:
        return np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        return None


def _psd_factor(a: np.ndarray) -> np.ndarray:
    """``F [D, r]`` with ``a = F F^T`` for a symmetric PSD ``a``, from its eigendecomposition; eigenvalues
    at rounding level (<= D * eps * largest) are dropped, so ``r`` is the numerical rank."""
    w, v = np.linalg.eigh(a)
    keep = w > max(float(w[-1]), 0.0) * a.shape[0] * np.finfo(np.float64).eps
    return v[:, keep] * np.sqrt(w[keep])


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2), in float64:

    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))``.

    The trace term is computed without a general (non-symmetric) ``sqrtm``: with any factor
    ``sigma1 = F F^T``, ``sigma1 sigma2`` has the same eigenvalues as the symmetric PSD matrix
    ``F^T sigma2 F``, so ``tr((sigma1 sigma2)^(1/2)) = sum(sqrt(eig(F^T sigma2 F)))``. ``F`` is the
    Cholesky factor when ``sigma1`` (or, swapping the arguments, ``sigma2``) is positive definite, else
    a factor from an eigendecomposition restricted to the numerical rank, which also handles singular
    covariances (fewer samples than dimensions). Tiny negative eigenvalues from rounding are clipped to 0, so there is no
    imaginary part to drop and no epsilon offset to add. A result below 0 (rounding) is returned as 0.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    s1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"shape mismatch: mu1 {list(mu1.shape)}, sigma1 {list(s1.shape)}, mu2 {list(mu2.shape)}, "
            f"sigma2 {list(s2.shape)}"
        )
    for name, a in (("mu1", mu1), ("sigma1", s1), ("mu2", mu2), ("sigma2", s2)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} has non-finite values")
    s1 = (s1 + s1.T) / 2
    s2 = (s2 + s2.T) / 2
    diff = mu1 - mu2
    fd = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))
    return max(fd, 0.0)


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """``tr((s1 s2)^(1/2))`` for symmetric PSD ``s1``, ``s2`` (see :func:`frechet_distance`)."""
    f, b = _cholesky(s1), s2
    if f is None:
        f, b = _cholesky(s2), s1
    if f is None:
        f, b = _psd_factor(s1), s2
    m = f.T @ b @ f
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` of class probabilities ``[N, K]``: mean and
    standard deviation over ``splits`` equal parts (``np.array_split``), ``p(y)`` estimated per part.

    Ranges from 1 (every prediction the same, or uniform) to K (confident and evenly spread over K
    classes). ``0 log 0`` counts as 0, so one-hot predictions are fine.
    """
    from scipy.special import xlogy

    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 1:
        raise ValueError(f"probabilities must be [N, K], got shape {list(p.shape)}")
    if splits < 1 or p.shape[0] < splits:
        raise ValueError(f"need at least {splits} samples for {splits} splits, got {p.shape[0]}")
    if np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("probabilities must be non-negative and sum to 1 per row (apply softmax to logits)")
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(axis=0, keepdims=True)
        kl = (xlogy(part, part) - xlogy(part, py)).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances ``[len(a), len(b)]`` (float32, clipped at 0)."""
    d = (a * a).sum(1)[:, None] - 2.0 * (a @ b.T) + (b * b).sum(1)[None, :]
    return np.maximum(d, 0.0, out=d)


def _as_features(x: np.ndarray, name: str) -> np.ndarray:
    f = np.asarray(x, dtype=np.float32)
    if f.ndim != 2 or f.shape[0] == 0:
        raise ValueError(f"{name} must be features [N, D], got shape {list(f.shape)}")
    return f


def knn_radii(features: np.ndarray, k: int = 3, batch_size: int = 1000) -> np.ndarray:
    """Squared distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    f = _as_features(features, "features")
    if not 1 <= k < f.shape[0]:
        raise ValueError(f"k must be in [1, N-1] = [1, {f.shape[0] - 1}], got {k}")
    radii = np.empty(f.shape[0], np.float32)
    for start in range(0, f.shape[0], batch_size):
        d = _sq_dists(f[start : start + batch_size], f)
        # the point itself is at distance 0, so index k of the sorted row is the k-th neighbour
        radii[start : start + batch_size] = np.partition(d, k, axis=1)[:, k]
    return radii


def manifold_fraction(
    manifold: np.ndarray, radii: np.ndarray, queries: np.ndarray, batch_size: int = 1000
) -> float:
    """Fraction of ``queries`` inside the union of balls around ``manifold`` points (squared ``radii``)."""
    m = _as_features(manifold, "manifold")
    q = _as_features(queries, "queries")
    if m.shape[1] != q.shape[1]:
        raise ValueError(f"feature sizes differ: {m.shape[1]} vs {q.shape[1]}")
    inside = 0
    for start in range(0, q.shape[0], batch_size):
        d = _sq_dists(q[start : start + batch_size], m)
        inside += int(np.count_nonzero((d <= radii[None, :]).any(axis=1)))
    return inside / q.shape[0]


def precision_recall(
    real: np.ndarray, fake: np.ndarray, k: int = 3, *, real_radii: np.ndarray | None = None
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, as in the ADM evaluator).

    Each set's manifold is the union of balls around its points with radius the distance to the point's
    k-th nearest neighbour in that set. Precision: fraction of ``fake`` inside the real manifold.
    Recall: fraction of ``real`` inside the fake manifold. ``real_radii`` (from :func:`knn_radii` with
    the same ``k``) skips recomputing the real set's radii, e.g. for a cached reference.
    """
    real = _as_features(real, "real features")
    fake = _as_features(fake, "fake features")
    if real_radii is None:
        real_radii = knn_radii(real, k)
    elif np.shape(real_radii) != (real.shape[0],):
        raise ValueError(f"real_radii must have shape [{real.shape[0]}], got {list(np.shape(real_radii))}")
    precision = manifold_fraction(real, np.asarray(real_radii, np.float32), fake)
    recall = manifold_fraction(fake, knn_radii(fake, k), real)
    return precision, recall
