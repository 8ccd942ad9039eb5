from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from qdit.errors import QditError
from qdit.eval.domain import DomainFeatures, domain_metrics, domain_refstats
from qdit.eval.npz import Reference, load_reference


class StandIn(nn.Module):
    """Same interface as qdit's classifier: predicts class c for an image of brightness 20*c + 10."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.proj = nn.Linear(28 * 28, 16)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.proj(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = (x.mean(dim=(1, 2, 3)) * 255.0 - 10.0) / 20.0
        return -100.0 * (level[:, None] - torch.arange(10.0)[None]) ** 2


def class_images(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Images of brightness 20*label plus small noise, [N, 28, 28, 1] uint8."""
    noise = np.random.default_rng(seed).integers(-3, 4, size=(len(labels), 28, 28, 1))
    return np.clip(20 * labels[:, None, None, None] + 10 + noise, 0, 255).astype(np.uint8)


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("QDIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_extract_shapes_and_range() -> None:
    seen = []

    class Probe(StandIn):
        def features(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return super().features(x)

    labels = np.arange(30) % 10
    out = DomainFeatures(Probe(), batch_size=8, progress=False).extract(class_images(labels)[..., 0])
    assert out.features.shape == (30, 16) and out.logits.shape == (30, 10)
    assert all(x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32 for x in seen)
    assert 0.0 <= min(float(x.min()) for x in seen) and max(float(x.max()) for x in seen) <= 1.0
    np.testing.assert_array_equal(out.logits.argmax(1), labels)


def test_class_accuracy_and_domain_is(cache: Path) -> None:
    labels = np.arange(100) % 10
    imgs = class_images(labels)
    domain = DomainFeatures(StandIn(), progress=False)
    res = domain_metrics(imgs, labels, None, domain, ["class_acc", "domain_is"])
    assert res["class_acc"] == 1.0
    assert res["domain_is"] == pytest.approx(10.0, rel=1e-3)  # confident, evenly spread over 10 classes
    wrong = labels.copy()
    wrong[:25] = (wrong[:25] + 1) % 10
    assert domain_metrics(imgs, wrong, None, domain, ["class_acc"])["class_acc"] == pytest.approx(0.75)
    same = class_images(np.full(100, 3))
    assert domain_metrics(same, None, None, domain, ["domain_is"])["domain_is"] == pytest.approx(
        1.0, abs=1e-3
    )


def test_domain_fd_and_cache(cache: Path, tmp_path: Path) -> None:
    labels = np.arange(200) % 10
    ref_path = tmp_path / "ref.npz"
    np.savez(ref_path, arr_0=class_images(labels, seed=1), labels=labels)
    ref = load_reference(str(ref_path))
    calls = []

    class Counting(DomainFeatures):
        def extract(self, images, desc="classifier", **kwargs):
            calls.append(len(images))
            return super().extract(images, desc, **kwargs)

    domain = Counting(StandIn(), progress=False)
    same = domain_metrics(ref.images, labels, ref, domain, ["domain_fd"])["domain_fd"]
    assert same == pytest.approx(0.0, abs=1e-6)
    cached = cache / "refstats" / f"{ref.name}-fmnist-classifier.npz"
    assert cached.is_file()
    assert calls == [200, 200]
    other = domain_metrics(class_images(labels, seed=2), labels, ref, domain, ["domain_fd"])["domain_fd"]
    darker = domain_metrics(class_images(np.clip(labels - 2, 0, 9)), labels, ref, domain, ["domain_fd"])[
        "domain_fd"
    ]
    assert calls == [200, 200, 200, 200]  # the reference came from the cache
    assert 0.0 < other < darker
    # another classifier (different weights): the cached statistics are stale and get recomputed
    domain_metrics(ref.images, labels, ref, Counting(StandIn(seed=1), progress=False), ["domain_fd"])
    assert calls[4:] == [200, 200]


def test_domain_input_errors(cache: Path) -> None:
    domain = DomainFeatures(StandIn(), progress=False)
    rgb = np.zeros((20, 28, 28, 3), np.uint8)
    with pytest.raises(QditError, match="28x28 grayscale"):
        domain_metrics(rgb, None, None, domain, ["domain_is"])
    with pytest.raises(QditError, match="needs the class labels"):
        domain_metrics(class_images(np.arange(20) % 10), None, None, domain, ["class_acc"])
    with pytest.raises(QditError, match="only precomputed statistics"):
        domain_refstats(Reference(name="x", source="x.npz", stats={"mu": np.zeros(2)}), domain)
    with pytest.raises(QditError, match="unknown domain metrics"):
        domain_metrics(class_images(np.arange(20) % 10), None, None, domain, ["fid"])


def test_real_classifier_on_test_set(cache: Path) -> None:
    """With qdit's trained classifier: test images against the test set give FD ~ 0 and high accuracy."""
    from qdit.data import DataNotFoundError

    try:
        from qdit.models.classifier import load_classifier

        model = load_classifier()
    except (ImportError, OSError, ValueError, RuntimeError) as exc:
        pytest.skip(f"Fashion-MNIST classifier not available: {exc}")
    try:
        ref = load_reference("fashion-mnist-test")
    except QditError as exc:
        if isinstance(exc.__cause__, DataNotFoundError):
            pytest.skip(str(exc))
        raise
    assert ref.images is not None and ref.labels is not None
    domain = DomainFeatures(model, progress=False)
    idx = np.random.default_rng(0).choice(len(ref.images), 1000, replace=False)
    res = domain_metrics(ref.images[idx], ref.labels[idx], ref, domain)
    assert res["class_acc"] > 0.8  # a 1-epoch classifier (87.8% test accuracy) gave 0.866 here
    assert res["domain_is"] > 5.0
    shifted = np.roll(ref.images[idx], 7, axis=2)
    res_bad = domain_metrics(shifted, ref.labels[idx], ref, domain, ["domain_fd"])
    assert res["domain_fd"] < res_bad["domain_fd"] / 3
