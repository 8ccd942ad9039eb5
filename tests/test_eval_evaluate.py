"""``qdit.eval.evaluate`` and the reference-statistics cache, with fast stand-in extractors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from qdit.errors import QditError
from qdit.eval.domain import DomainFeatures
from qdit.eval.evaluate import default_metrics, evaluate, parse_metrics
from qdit.eval.inception import InceptionOutput
from qdit.eval.metrics import knn_radii, precision_recall
from qdit.eval.npz import Reference, Samples, load_reference
from qdit.eval.refstats import load_refstats, save_refstats, stats_from_features


class FakeInception:
    """Duck-typed stand-in for InceptionFeatures: features are fixed random projections of the pixels."""

    name = key = "fake"
    fingerprint = "fake-1"
    has_logits = False

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.w_pool = rng.standard_normal((49, 16)).astype(np.float32)
        self.w_sp = rng.standard_normal((49, 6)).astype(np.float32)
        self.calls: list[int] = []

    def extract(self, images: np.ndarray, *, spatial: bool = True, desc: str = "") -> InceptionOutput:
        self.calls.append(len(images))
        x = images.astype(np.float32).mean(axis=-1)
        n, h, w = x.shape
        x = (
            x[:, : h // 7 * 7, : w // 7 * 7].reshape(n, 7, h // 7, 7, w // 7).mean(axis=(2, 4)).reshape(n, 49)
            / 255
        )
        return InceptionOutput(
            pool=np.tanh(x @ self.w_pool), spatial=np.tanh(x @ self.w_sp) if spatial else None
        )


class TinyClassifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.f = torch.nn.Linear(28 * 28, 8)
        self.h = torch.nn.Linear(8, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.f(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h(self.features(x))


@pytest.fixture(autouse=True)
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("QDIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def fmnist_like(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.zeros((n, 28, 28, 1), np.uint8)
    base[:, 4:24, 8:20] = rng.integers(100, 256, (n, 1, 1, 1), dtype=np.uint8)
    noise = rng.integers(0, 40, (n, 28, 28, 1))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def test_parse_and_default_metrics() -> None:
    assert parse_metrics("FID, sfid,fid") == ["fid", "sfid"]
    with pytest.raises(QditError, match="unknown metric"):
        parse_metrics("fid,kid")
    with pytest.raises(QditError, match="no metrics"):
        parse_metrics(" , ")
    gray = Samples(images=np.zeros((4, 28, 28, 1), np.uint8), labels=np.zeros(4, np.int64))
    assert default_metrics(gray) == [
        "fid",
        "sfid",
        "precision",
        "recall",
        "domain_fd",
        "domain_is",
        "class_acc",
    ]
    rgb = Samples(images=np.zeros((4, 32, 32, 3), np.uint8), labels=None)
    assert default_metrics(rgb) == ["fid", "sfid", "precision", "recall"]


def test_evaluate_identical_and_different_sets(tmp_path: Path, cache: Path) -> None:
    ref_images = fmnist_like(60, 0)
    path = tmp_path / "ref.npz"
    np.savez(path, arr_0=ref_images, labels=np.arange(60) % 10)
    ref = load_reference(str(path))
    fake = FakeInception()
    domain = DomainFeatures(TinyClassifier(), progress=False)
    metrics = ["fid", "sfid", "precision", "recall", "domain_fd", "class_acc", "domain_is"]
    same = evaluate(Samples(ref_images, np.arange(60) % 10), ref, metrics, inception=fake, domain=domain)
    assert list(same) == [*metrics, "domain_is_std"]
    assert same["fid"] == pytest.approx(0.0, abs=1e-6) and same["sfid"] == pytest.approx(0.0, abs=1e-6)
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    assert same["domain_fd"] == pytest.approx(0.0, abs=1e-6)
    assert 0.0 <= same["class_acc"] <= 1.0 and 1.0 <= same["domain_is"] <= 10.0
    assert (cache / "refstats" / f"{ref.name}-fake.npz").is_file()
    assert (cache / "refstats" / f"{ref.name}-fmnist-classifier.npz").is_file()
    assert fake.calls == [60, 60]

    other = evaluate(Samples(fmnist_like(40, 1), None), ref, ["fid", "precision"], inception=fake)
    assert other["fid"] > 0.0 and list(other) == ["fid", "precision"]
    assert fake.calls == [60, 60, 40]  # reference statistics came from the cache


def test_evaluate_with_statistics_only_reference(tmp_path: Path) -> None:
    fake = FakeInception()
    feats = fake.extract(fmnist_like(50, 2), spatial=False).pool
    s = stats_from_features(feats)
    path = tmp_path / "stats.npz"
    np.savez(path, mu=s.mu, sigma=s.sigma, features=s.features, radii=s.radii)
    ref = load_reference(str(path))
    samples = Samples(fmnist_like(30, 3), None)
    res = evaluate(samples, ref, ["fid", "precision", "recall"], inception=fake)
    assert res["fid"] > 0 and 0 <= res["precision"] <= 1
    with pytest.raises(QditError, match="sfid needs reference images or 'mu_s'"):
        evaluate(samples, ref, ["sfid"], inception=fake)
    with pytest.raises(QditError, match="domain_fd needs reference images"):
        evaluate(samples, ref, ["domain_fd"], domain=DomainFeatures(TinyClassifier(), progress=False))
    np.savez(path, mu=s.mu, sigma=s.sigma)
    with pytest.raises(QditError, match="precision/recall need reference images or 'features'"):
        evaluate(samples, load_reference(str(path)), ["recall"], inception=fake)


def test_evaluate_input_checks_come_first() -> None:
    fake = FakeInception()
    ref = Reference(name="r", source="r", images=fmnist_like(20, 0))
    with pytest.raises(QditError, match="Inception Score needs the Inception classification layer"):
        evaluate(Samples(fmnist_like(20, 1), None), ref, ["fid", "is"], inception=fake)
    with pytest.raises(QditError, match="more than 3 samples"):
        evaluate(Samples(fmnist_like(3, 1), None), ref, ["precision"], inception=fake)
    with pytest.raises(QditError, match="needs the class labels"):
        evaluate(Samples(fmnist_like(20, 1), None), ref, ["fid", "class_acc"], inception=fake)
    assert fake.calls == []  # nothing was computed


def test_refstats_round_trip_and_staleness(tmp_path: Path) -> None:
    feats = np.random.default_rng(0).standard_normal((30, 5)).astype(np.float32)
    s = stats_from_features(feats, feats[:, :3], max_features=20)
    assert s.features is not None and s.features.shape == (20, 5) and s.count == 30
    assert s.radii is not None and s.radii.shape == (20,)
    path = tmp_path / "x.npz"
    save_refstats(path, s, extractor="e", fingerprint="f1")
    back = load_refstats(path, extractor="e", fingerprint="f1")
    assert back is not None and back.count == 30
    for key in ("mu", "sigma", "mu_s", "sigma_s", "features", "radii"):
        np.testing.assert_array_equal(getattr(back, key), getattr(s, key))
    assert load_refstats(path, extractor="e", fingerprint="f2") is None
    assert load_refstats(path, extractor="other", fingerprint="f1") is None
    assert load_refstats(tmp_path / "missing.npz", extractor="e", fingerprint="f1") is None
    path.write_bytes(b"corrupt")
    assert load_refstats(path, extractor="e", fingerprint="f1") is None


def test_precision_recall_with_cached_radii() -> None:
    rng = np.random.default_rng(0)
    real, fake = rng.standard_normal((80, 6)), rng.standard_normal((50, 6)) * 1.3
    assert precision_recall(real, fake, real_radii=knn_radii(real, 3)) == precision_recall(real, fake)
    with pytest.raises(ValueError, match="real_radii"):
        precision_recall(real, fake, real_radii=np.ones(3))
