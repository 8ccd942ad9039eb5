"""Video metrics of uint8 clips ``[N, T, H, W, C]``: FVD and three temporal / per-frame measures.

- ``fvd``: Fréchet distance between clip features of samples and reference (ClipNet's 256-d clip
  features by default, or I3D's with a local weights file: :mod:`qdit.eval.videofeat`,
  :mod:`qdit.eval.i3d`). Reference statistics are cached like the image ones (:mod:`qdit.eval.refstats`),
  keyed by the extractor and its fingerprint.
- ``frame_acc``: fraction of all frames that ClipNet's per-frame head assigns to the class the clip was
  generated for (needs ``labels``). A clip whose garment dissolves or turns into another one halfway
  loses frames here even when its first frame is right.
- ``consistency``: subject consistency as in VBench: for each clip and each frame ``t >= 1``,
  ``(cos(f_t, f_0) + cos(f_t, f_{t-1})) / 2`` on ClipNet frame features, averaged over frames and clips.
  1 for a static clip; real moving clips score a little lower, because frame features also encode where
  the garment is.
- ``motion``: mean absolute frame-to-frame pixel change, pixels in ``[0, 1]`` (0 for a static clip). No
  network: it tells a frozen or flickering generator from one that moves like the data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from qdit.errors import QditError
from qdit.eval.metrics import feature_stats, frechet_distance
from qdit.eval.npz import check_clips
from qdit.eval.refstats import RefStats, cached_refstats, stats_from_features

if TYPE_CHECKING:
    from qdit.eval.npz import Reference
    from qdit.eval.videofeat import VideoFeatures, VideoOutput

VIDEO_METRICS = ("fvd", "frame_acc", "consistency", "motion")
FRAME_METRICS = ("frame_acc", "consistency")  # need ClipNet's frame outputs


class ClipExtractor(Protocol):
    """What FVD needs of a feature extractor (ClipNet's :class:`VideoFeatures`, :class:`I3DFeatures`)."""

    key: str
    fingerprint: str
    has_frames: bool

    def check(self, clips: np.ndarray, what: str = "clips") -> np.ndarray: ...

    def extract(self, clips: np.ndarray, desc: str = ..., *, frames: bool = ...) -> VideoOutput: ...


def temporal_consistency(frame_features: np.ndarray) -> float:
    """VBench-style subject consistency of frame features ``[N, T, F]`` (T >= 2); see module doc.
    A zero feature vector has cosine 0 with everything."""
    f = np.asarray(frame_features, dtype=np.float64)
    if f.ndim != 3 or f.shape[1] < 2 or f.shape[0] == 0:
        raise ValueError(f"frame features must be [N, T, F] with T >= 2, got {list(f.shape)}")
    norm = np.linalg.norm(f, axis=2, keepdims=True)
    u = f / np.maximum(norm, 1e-12)
    to_first = (u[:, 1:] * u[:, :1]).sum(axis=2)
    to_prev = (u[:, 1:] * u[:, :-1]).sum(axis=2)
    return float(((to_first + to_prev) / 2).mean())


def mean_motion(clips: np.ndarray, chunk: int = 256) -> float:
    """Mean absolute frame-to-frame change of uint8 clips ``[N, T, H, W, C]`` (T >= 2), pixels in [0, 1]."""
    arr = check_clips(clips)
    if arr.shape[1] < 2:
        raise QditError(f"motion needs clips of at least 2 frames, got {arr.shape[1]}")
    total = 0.0
    for start in range(0, arr.shape[0], chunk):
        c = arr[start : start + chunk].astype(np.int16)
        total += float(np.abs(np.diff(c, axis=1)).sum(dtype=np.float64))
    count = arr.shape[0] * (arr.shape[1] - 1) * int(np.prod(arr.shape[2:]))
    return total / count / 255.0


def frame_accuracy(frame_probs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of frames whose top class ``argmax frame_probs[n, t]`` is ``labels[n]``."""
    p = np.asarray(frame_probs)
    return float((p.argmax(axis=2) == np.asarray(labels)[:, None]).mean())


def reference_clips(ref: Reference) -> np.ndarray:
    """The reference's clips ``[N, T, H, W, C]``; QditError when it holds images or statistics only."""
    if ref.images is None or ref.images.ndim != 5:
        raise QditError(
            f"fvd needs reference clips [N, T, H, W, C]; {ref.source} has "
            f"{'only precomputed statistics' if ref.images is None else 'images'} "
            "(use fashion-mnist-clips-test, fashion-mnist-clips-train or a clips .npz)"
        )
    return ref.images


def video_refstats(ref: Reference, extractor: ClipExtractor, *, refresh: bool = False) -> RefStats:
    """Clip-feature statistics of a reference with clips (computed once per extractor, cached)."""
    clips = extractor.check(reference_clips(ref), f"reference {ref.source}")

    def compute() -> RefStats:
        out = extractor.extract(clips, desc=f"reference {ref.name} (once, cached)", frames=False)
        return stats_from_features(out.clip_features, keep_features=False)

    return cached_refstats(ref.name, extractor.key, extractor.fingerprint, compute, refresh=refresh)


def check_video_request(
    clips: np.ndarray,
    labels: np.ndarray | None,
    ref: Reference | None,
    metrics: list[str] | tuple[str, ...],
    features: ClipExtractor | None = None,
) -> None:
    """Every check that can fail before feature extraction (shapes, labels, reference); QditError.
    Without ``features`` the FVD extractor's own shape requirements are not checked."""
    from qdit.eval.domain import check_domain_labels
    from qdit.eval.videofeat import check_clipnet_clips

    unknown = set(metrics) - set(VIDEO_METRICS)
    if unknown:
        raise QditError(f"unknown video metrics: {', '.join(sorted(unknown))}")
    arr = check_clips(clips, "samples")
    if {"motion", "consistency"} & set(metrics) and arr.shape[1] < 2:
        raise QditError(f"motion and consistency need clips of at least 2 frames, got {arr.shape[1]}")
    if set(FRAME_METRICS) & set(metrics):
        check_clipnet_clips(arr, "samples")
    if "frame_acc" in metrics:
        if labels is None:
            raise QditError("frame_acc needs the class labels of the samples ('labels' in the samples .npz)")
        check_domain_labels(labels, arr.shape[0], "samples: labels")
    if "fvd" in metrics:
        if ref is None:
            raise QditError("fvd needs a reference")
        if arr.shape[0] < 2:
            raise QditError(f"fvd needs at least 2 samples, got {arr.shape[0]}")
        ref_clips = reference_clips(ref)
        if features is not None:
            features.check(arr, "samples")
            features.check(ref_clips, f"reference {ref.source}")


def video_metrics(
    clips: np.ndarray,
    labels: np.ndarray | None,
    ref: Reference | None,
    metrics: list[str] | tuple[str, ...] = VIDEO_METRICS,
    *,
    features: ClipExtractor | None = None,
    clipnet: VideoFeatures | None = None,
) -> dict[str, float]:
    """The requested video metrics of uint8 clips. ``features`` gives FVD's clip features (ClipNet or
    I3D), ``clipnet`` the frame outputs of ``frame_acc`` / ``consistency``; one ClipNet pass serves both
    when ``features`` is ``clipnet``."""
    check_video_request(clips, labels, ref, metrics, features)
    if "fvd" in metrics and features is None:
        raise QditError("fvd needs a feature extractor")
    if set(FRAME_METRICS) & set(metrics) and clipnet is None:
        raise QditError("frame_acc and consistency need ClipNet")
    arr = check_clips(clips, "samples")
    result: dict[str, float] = {}
    need_frames = bool(set(FRAME_METRICS) & set(metrics))
    fvd_out = frame_out = None
    if "fvd" in metrics:
        assert features is not None and ref is not None
        ref_stats = video_refstats(ref, features)
        shared = need_frames and features is clipnet
        fvd_out = features.extract(arr, desc=f"samples ({features.key})", frames=shared)
        if shared:
            frame_out = fvd_out
        mu, sigma = feature_stats(fvd_out.clip_features)
        result["fvd"] = frechet_distance(mu, sigma, ref_stats.mu, ref_stats.sigma)
    if need_frames and frame_out is None:
        assert clipnet is not None
        frame_out = clipnet.extract(arr, desc="samples (clipnet frames)", frames=True)
    if "frame_acc" in metrics:
        assert frame_out is not None and frame_out.frame_probs is not None and labels is not None
        result["frame_acc"] = frame_accuracy(frame_out.frame_probs, labels)
    if "consistency" in metrics:
        assert frame_out is not None and frame_out.frame_features is not None
        result["consistency"] = temporal_consistency(frame_out.frame_features)
    if "motion" in metrics:
        result["motion"] = mean_motion(arr)
    return {k: result[k] for k in metrics if k in result}
