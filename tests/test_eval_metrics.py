from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg

from qdit.eval.metrics import (
    feature_stats,
    frechet_distance,
    inception_score,
    knn_radii,
    manifold_fraction,
    precision_recall,
    softmax,
)


def textbook_fd(mu1, s1, mu2, s2) -> float:
    """The formula as written, with a general matrix square root (independent of the implementation)."""
    covmean = np.real(scipy.linalg.sqrtm(s1 @ s2))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def random_gaussian(rng: np.random.Generator, d: int) -> tuple[np.ndarray, np.ndarray]:
    a = rng.standard_normal((d, d))
    return rng.standard_normal(d), a @ a.T / d + 0.1 * np.eye(d)


@pytest.mark.parametrize("d", [1, 3, 16, 64])
def test_frechet_distance_matches_textbook_formula(d: int) -> None:
    rng = np.random.default_rng(d)
    mu1, s1 = random_gaussian(rng, d)
    mu2, s2 = random_gaussian(rng, d)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        textbook_fd(mu1, s1, mu2, s2), rel=1e-9, abs=1e-9
    )
    # symmetric in its two arguments
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(frechet_distance(mu1, s1, mu2, s2), rel=1e-9)


def test_frechet_distance_closed_forms() -> None:
    d = 5
    # same covariance: only the mean term remains
    mu1, mu2 = np.zeros(d), np.arange(d, dtype=float)
    assert frechet_distance(mu1, np.eye(d), mu2, np.eye(d)) == pytest.approx(float(mu2 @ mu2))
    # commuting (diagonal) covariances: sum (sqrt(a) - sqrt(b))^2
    a, b = np.array([1.0, 4.0, 9.0, 0.25, 2.0]), np.array([4.0, 1.0, 9.0, 1.0, 0.5])
    expected = float(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    assert frechet_distance(mu1, np.diag(a), mu1, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    # identical Gaussians
    assert frechet_distance(mu2, np.diag(a), mu2, np.diag(a)) == pytest.approx(0.0, abs=1e-12)


def test_frechet_distance_singular_covariances() -> None:
    """Fewer samples than dimensions: compare with the nuclear norm of the cross product of the data."""
    rng = np.random.default_rng(0)
    n, d = 12, 40
    x, y = rng.standard_normal((n, d)), rng.standard_normal((n, d)) * 1.5 + 0.3
    (mu1, s1), (mu2, s2) = feature_stats(x), feature_stats(y)
    xc, yc = (x - mu1) / np.sqrt(n - 1), (y - mu2) / np.sqrt(n - 1)
    trace_sqrt = np.linalg.svd(xc @ yc.T, compute_uv=False).sum()  # tr((s1 s2)^1/2) for s1 = xc^T xc, ...
    expected = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(got) and got == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(np.array([np.nan, 0.0]), np.eye(2), np.zeros(2), np.eye(2))


def test_feature_stats() -> None:
    x = np.random.default_rng(1).standard_normal((50, 4)).astype(np.float32)
    mu, sigma = feature_stats(x)
    assert mu.dtype == np.float64 and sigma.shape == (4, 4)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False))
    with pytest.raises(ValueError):
        feature_stats(x[:1])


def test_inception_score_known_values() -> None:
    k = 10
    uniform = np.full((100, k), 1.0 / k)
    assert inception_score(uniform) == pytest.approx((1.0, 0.0))
    confident = np.eye(k)[np.arange(100) % k]  # every split holds each class once
    mean, std = inception_score(confident)
    assert mean == pytest.approx(k) and std == pytest.approx(0.0, abs=1e-12)
    one_class = np.eye(k)[np.zeros(100, dtype=int)]
    assert inception_score(one_class)[0] == pytest.approx(1.0)
    # four confident classes out of ten possible
    assert inception_score(np.eye(k)[np.arange(40) % 4], splits=10)[0] == pytest.approx(4.0)


def test_inception_score_of_logits_via_softmax() -> None:
    logits = np.random.default_rng(0).standard_normal((60, 7)) * 3
    p = softmax(logits)
    np.testing.assert_allclose(p.sum(1), 1.0)
    mean, _ = inception_score(p, splits=3)
    assert 1.0 < mean < 7.0
    with pytest.raises(ValueError, match="sum to 1"):
        inception_score(logits)
    with pytest.raises(ValueError, match="at least 10"):
        inception_score(p[:5])


def test_knn_radii_brute_force() -> None:
    x = np.random.default_rng(2).standard_normal((30, 5)).astype(np.float32)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    expected = np.sort(d, axis=1)[:, 3]  # column 0 is the point itself
    np.testing.assert_allclose(knn_radii(x, k=3, batch_size=7), expected, rtol=1e-4, atol=1e-4)


def test_precision_recall_identical_sets() -> None:
    x = np.random.default_rng(3).standard_normal((200, 16))
    assert precision_recall(x, x.copy()) == (1.0, 1.0)


def test_precision_recall_disjoint_sets() -> None:
    rng = np.random.default_rng(4)
    real = rng.standard_normal((100, 8))
    fake = rng.standard_normal((120, 8)) + 100.0
    assert precision_recall(real, fake) == (0.0, 0.0)


def test_precision_recall_half_covered() -> None:
    """Real data in two far-apart clusters; samples reproduce only one: precision 1, recall 1/2."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal((100, 8))
    b = rng.standard_normal((100, 8)) + 50.0
    real = np.concatenate([a, b])
    precision, recall = precision_recall(real, a + 1e-3)
    assert precision == 1.0
    assert recall == pytest.approx(0.5, abs=0.02)


def test_manifold_fraction_checks_sizes() -> None:
    with pytest.raises(ValueError, match="feature sizes"):
        manifold_fraction(np.zeros((4, 3)), np.ones(4), np.zeros((2, 5)))


def test_import_is_light() -> None:
    code = (
        "import sys, qdit.eval; from qdit.eval import frechet_distance; "
        "assert 'torch' not in sys.modules and 'scipy' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
