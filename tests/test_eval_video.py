"""Video metrics with the shipped ClipNet on real moving Fashion-MNIST clips: FVD tells real clips from
corrupted ones, consistency and motion behave on static clips, frame accuracy is high on real ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from qdit.data import DataNotFoundError, load_fashion_mnist_clips
from qdit.errors import QditError
from qdit.eval.evaluate import default_metrics, evaluate, video_extractor
from qdit.eval.metrics import feature_stats, frechet_distance
from qdit.eval.npz import Reference, Samples, load_reference, save_samples
from qdit.eval.train_clipnet import corrupt
from qdit.eval.video import frame_accuracy, mean_motion, temporal_consistency, video_metrics, video_refstats
from qdit.eval.videofeat import ClipNet, VideoFeatures

N_REAL = 1200  # test clips used here: two disjoint halves of 600


@pytest.fixture(scope="module")
def real() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first test clips ``[N, 8, 32, 32, 1]``, labels and motions (the reference set's own clips)."""
    try:
        clips, labels, motions = load_fashion_mnist_clips("test", seed=0, num=N_REAL)
    except DataNotFoundError as exc:
        pytest.skip(str(exc))
    return clips[..., None], labels, motions


@pytest.fixture(scope="module")
def clipnet() -> VideoFeatures:
    return VideoFeatures(progress=False)


@pytest.fixture(scope="module")
def real_out(real, clipnet: VideoFeatures):
    return clipnet.extract(real[0])


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("QDIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def fvd(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(*feature_stats(a), *feature_stats(b))


# ---- pure metric functions ---------------------------------------------------------------------------


def test_motion_by_hand() -> None:
    clip = np.zeros((1, 3, 2, 2, 1), np.uint8)
    clip[0, 1:, 0, 0] = 255  # one of 4 pixels switches on between frames 0 and 1, then stays on
    assert mean_motion(clip) == pytest.approx(1 / (2 * 4))
    half = clip // 2 + 0  # 127: the same change at half amplitude
    assert mean_motion(half) == pytest.approx(127 / 255 / 8)
    with pytest.raises(QditError, match="at least 2 frames"):
        mean_motion(clip[:, :1])


def test_consistency_by_hand() -> None:
    e1, e2 = np.eye(2)
    f = np.stack([e1, e2, e2])[None]  # t=1: cos to f0 = 0, to f0 = 0; t=2: cos to f0 = 0, to f1 = 1
    assert temporal_consistency(f) == pytest.approx((0.0 + 0.5) / 2)
    assert temporal_consistency(np.repeat(f[:, :1], 5, axis=1) * 3.0) == pytest.approx(1.0)
    assert frame_accuracy(np.eye(3)[None].repeat(2, 0), np.array([0, 1])) == pytest.approx(2 / 6)


# ---- the shipped ClipNet on real clips --------------------------------------------------------------


def test_extractor_outputs(real, clipnet: VideoFeatures, real_out) -> None:
    clips = real[0]
    assert real_out.clip_features.shape == (N_REAL, 256)
    assert real_out.frame_features.shape == (N_REAL, 8, 128)
    assert real_out.frame_probs.shape == (N_REAL, 8, 10)
    np.testing.assert_allclose(real_out.frame_probs.sum(-1), 1.0, atol=1e-5)
    small = VideoFeatures(clipnet.model, batch_size=7, progress=False).extract(clips[:20])  # batching
    np.testing.assert_allclose(small.clip_features, real_out.clip_features[:20], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(small.frame_features, real_out.frame_features[:20], rtol=1e-4, atol=1e-5)
    assert clipnet.key == "clipnet" and len(clipnet.fingerprint) == 16
    assert VideoFeatures(ClipNet(), progress=False).fingerprint != clipnet.fingerprint


@pytest.mark.parametrize(
    "shape",
    [(2, 8, 28, 28, 1), (2, 8, 32, 32, 3), (2, 4, 32, 32, 1), (2, 32, 32, 1)],
)
def test_extractor_refuses_other_shapes(clipnet: VideoFeatures, shape: tuple[int, ...]) -> None:
    with pytest.raises(QditError) as info:
        clipnet.extract(np.zeros(shape, np.uint8))
    assert "\n" not in str(info.value)


def test_frame_accuracy_of_real_clips(real, real_out) -> None:
    _, labels, _ = real
    assert frame_accuracy(real_out.frame_probs, labels) >= 0.85
    assert frame_accuracy(real_out.frame_probs, (labels + 1) % 10) < 0.1  # the wrong class


def test_consistency_and_motion_static_vs_real(real, clipnet: VideoFeatures, real_out) -> None:
    clips = real[0][:200]
    static = corrupt(clips, "static", np.random.default_rng(0))
    out = clipnet.extract(static)
    assert temporal_consistency(out.frame_features) == pytest.approx(1.0, abs=1e-6)
    real_c = temporal_consistency(real_out.frame_features)
    assert 0.5 < real_c < 0.99
    assert mean_motion(static) == 0.0
    # by hand: mean over clips and frame pairs of the mean absolute pixel change, in [0, 1]
    by_hand = np.mean(
        [
            np.mean(np.abs(c[t].astype(np.float64) - c[t - 1].astype(np.float64))) / 255
            for c in clips
            for t in range(1, c.shape[0])
        ]
    )
    assert mean_motion(clips) == pytest.approx(by_hand, rel=1e-12)
    assert 0.02 < by_hand < 0.2


def test_motion_head_not_fooled_by_static_clips(real, clipnet: VideoFeatures) -> None:
    """The motion head is sure about real clips' paths and unsure about static ones (trained so)."""
    clips, _, motions = real
    x = torch.from_numpy(clips[:300, ..., 0]).float().div(255).unsqueeze(2)
    static = torch.from_numpy(corrupt(clips[:300, ..., 0], "static", np.random.default_rng(1))).float()
    with torch.inference_mode():
        p_real = torch.softmax(clipnet.model(x).motion_logits, 1)
        p_static = torch.softmax(clipnet.model(static.div(255).unsqueeze(2)).motion_logits, 1)
    assert (p_real.argmax(1).numpy() == motions[:300]).mean() > 0.9
    assert p_real.max(1).values.mean() > 0.8
    assert p_static.max(1).values.mean() < 0.4


def test_fvd_halves_vs_corrupted(real, clipnet: VideoFeatures, real_out) -> None:
    clips, labels, _ = real
    a, b = real_out.clip_features[:600], real_out.clip_features[600:]
    base = fvd(a, b)
    rng = np.random.default_rng(0)
    second = clips[600:]
    corrupted = {
        "shuffled": clipnet.extract(corrupt(second, "shuffled", rng)).clip_features,
        "static": clipnet.extract(corrupt(second, "static", rng)).clip_features,
        # the wrong class mix: only clips of the first five classes
        "classes": b[labels[600:] < 5],
    }
    for name, feats in corrupted.items():
        assert fvd(a, feats) > 5 * base, (name, fvd(a, feats), base)


# ---- evaluate() and the reference cache --------------------------------------------------------------


def test_evaluate_clips_against_a_clips_file(
    real, clipnet: VideoFeatures, tmp_path: Path, cache: Path
) -> None:
    clips, labels, _ = real
    ref_path = tmp_path / "ref.npz"
    save_samples(ref_path, clips[600:], labels[600:])
    ref = load_reference(str(ref_path))
    samples = Samples(clips[:100], labels[:100])
    assert default_metrics(samples) == ["fvd", "frame_acc", "consistency", "motion"]
    assert default_metrics(Samples(clips[:100], None)) == ["fvd", "consistency", "motion"]
    assert default_metrics(Samples(np.zeros((2, 8, 16, 16, 3), np.uint8), None)) == ["fvd", "motion"]
    res = evaluate(samples, ref, default_metrics(samples), video=clipnet)
    assert list(res) == ["fvd", "frame_acc", "consistency", "motion"]
    assert res["fvd"] > 0 and res["frame_acc"] >= 0.85 and 0.5 < res["consistency"] < 1
    assert res["motion"] == pytest.approx(mean_motion(clips[:100]))
    cached = list((cache / "refstats").glob("file-*-clipnet.npz"))
    assert len(cached) == 1

    def boom(*args, **kwargs):
        raise AssertionError("reference statistics should come from the cache")

    clipnet_again = VideoFeatures(clipnet.model, progress=False)
    clipnet_again.extract = boom  # type: ignore[method-assign]
    stats = video_refstats(ref, clipnet_again)
    assert stats.count == 600
    other = VideoFeatures(ClipNet(), progress=False)  # another network: stale cache, recomputed
    assert video_refstats(ref, other).count == 600
    assert len(list((cache / "refstats").glob("file-*-clipnet.npz"))) == 1


def test_evaluate_refuses_mismatched_requests(real, clipnet: VideoFeatures, cache: Path) -> None:
    clips, labels, _ = real
    ref = Reference(name="clips", source="clips.npz", images=clips[:50], labels=labels[:50])
    img_ref = Reference(name="imgs", source="imgs.npz", images=np.zeros((10, 28, 28, 1), np.uint8))
    samples = Samples(clips[:20], labels[:20])
    cases = [
        (samples, ref, ["fid"], "image metric"),
        (Samples(np.zeros((10, 28, 28, 1), np.uint8), None), img_ref, ["fvd"], "video metric"),
        (samples, img_ref, ["fvd"], "fvd needs reference clips"),
        (Samples(clips[:20], None), ref, ["frame_acc"], "frame_acc needs the class labels"),
        (Samples(clips[:20], np.full(20, 12)), ref, ["frame_acc"], "class ids in [0, 9]"),
        (Samples(clips[:1], labels[:1]), ref, ["fvd"], "at least 2 samples"),
        (Samples(np.zeros((3, 8, 16, 16, 3), np.uint8), None), ref, ["consistency"], "ClipNet features need"),
        (Samples(np.zeros((3, 8, 16, 16, 3), np.uint8), None), ref, ["fvd"], "ClipNet features need"),
    ]
    for s, r, metrics, fragment in cases:
        with pytest.raises(QditError, match=fragment.replace("[", r"\[").replace("]", r"\]")) as info:
            evaluate(s, r, metrics, video=clipnet, clipnet=clipnet)
        assert "\n" not in str(info.value)
    with pytest.raises(QditError, match="needs --i3d PATH"):
        evaluate(samples, ref, ["fvd"], video_features="i3d")
    with pytest.raises(QditError, match="not clipnet"):
        video_extractor("clipnet", i3d_path="x.pt")
    # motion alone needs no network and no labels
    assert video_metrics(clips[:5], None, None, ["motion"]) == {"motion": mean_motion(clips[:5])}


def test_named_clip_reference(real) -> None:
    ref = load_reference("fashion-mnist-clips-test")
    assert ref.images.shape == (10_000, 8, 32, 32, 1) and ref.images.dtype == np.uint8
    np.testing.assert_array_equal(ref.images[:N_REAL], real[0])
    np.testing.assert_array_equal(ref.labels[:N_REAL], real[1])
