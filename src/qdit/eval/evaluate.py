"""Evaluate a set of samples against a reference: the library side of ``qdit eval``.

Inputs are checked before any expensive work (weights present, metrics computable from this reference,
image shapes, labels), so that a bad call fails in a second with one clear message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qdit.errors import QditError
from qdit.eval.metrics import feature_stats, frechet_distance, precision_recall
from qdit.eval.refstats import PR_K

if TYPE_CHECKING:
    import torch

    from qdit.eval.domain import DomainFeatures
    from qdit.eval.inception import InceptionFeatures
    from qdit.eval.npz import Reference, Samples
    from qdit.eval.video import ClipExtractor
    from qdit.eval.videofeat import VideoFeatures

INCEPTION_METRICS = ("fid", "sfid", "is", "precision", "recall")
DOMAIN_METRICS = ("domain_fd", "class_acc", "domain_is")
IMAGE_METRICS = INCEPTION_METRICS + DOMAIN_METRICS
VIDEO_METRICS = ("fvd", "frame_acc", "consistency", "motion")  # see qdit.eval.video
ALL_METRICS = IMAGE_METRICS + VIDEO_METRICS
VIDEO_FEATURES = ("clipnet", "i3d")


def parse_metrics(text: str) -> list[str]:
    """``"fid,sfid"`` -> ``["fid", "sfid"]`` (order kept, duplicates dropped); unknown names -> QditError."""
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not names:
        raise QditError("no metrics given")
    unknown = [n for n in names if n not in ALL_METRICS]
    if unknown:
        raise QditError(f"unknown metric(s) {', '.join(unknown)}; choose from {','.join(ALL_METRICS)}")
    return list(dict.fromkeys(names))


def default_metrics(samples: Samples) -> list[str]:
    """Images: fid, sfid, precision, recall; plus the domain metrics for 28x28 grayscale samples
    (class_acc only when the samples have labels). Clips: fvd, frame_acc (with labels), consistency,
    motion for clips of ClipNet's shape ``[N, 8, 32, 32, 1]``; fvd and motion for other clips."""
    if samples.is_video:
        from qdit.eval.videofeat import CLIP_FRAMES, CLIP_SIZE

        if samples.images.shape[1:] != (CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE, 1):
            return ["fvd", "motion"]
        return ["fvd"] + (["frame_acc"] if samples.labels is not None else []) + ["consistency", "motion"]
    names = ["fid", "sfid", "precision", "recall"]
    if samples.images.shape[1:] == (28, 28, 1):
        names += ["domain_fd", "domain_is"] + (["class_acc"] if samples.labels is not None else [])
    return names


def evaluate(
    samples: Samples,
    ref: Reference,
    metrics: list[str] | tuple[str, ...],
    *,
    batch_size: int = 50,
    bf16: bool = False,
    inception_mode: str | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    inception: InceptionFeatures | None = None,
    domain: DomainFeatures | None = None,
    video_features: str = "clipnet",
    i3d_path: str | None = None,
    i3d_features: str = "logits",
    video: ClipExtractor | None = None,
    clipnet: VideoFeatures | None = None,
) -> dict[str, float]:
    """The requested metrics of ``samples`` against ``ref`` (see :data:`ALL_METRICS`).

    ``inception``/``domain`` replace the default extractors (otherwise built from ``device``,
    ``progress`` and, for Inception, ``batch_size`` and ``inception_mode``, one of
    :data:`qdit.eval.inception.INCEPTION_MODES`, default ``fp32``; ``bf16=True`` means ``"bf16"``). Reference statistics come from the
    cache or are computed once (see :mod:`qdit.eval.refstats`). ``domain_is`` also adds ``domain_is_std``.

    Clip samples take the video metrics (:mod:`qdit.eval.video`); FVD's features are ClipNet's
    (``video_features="clipnet"``) or I3D's (``"i3d"``, from the local file ``i3d_path``); ``video`` and
    ``clipnet`` replace those extractors. Image metrics on clips, or video metrics on images, are a
    QditError.
    """
    metrics = parse_metrics(",".join(metrics))
    img = [m for m in metrics if m in IMAGE_METRICS]
    vid = [m for m in metrics if m in VIDEO_METRICS]
    if samples.is_video and img:
        raise QditError(
            f"{', '.join(img)}: image metric(s), but the samples are clips {list(samples.images.shape)}; "
            f"clip samples take {','.join(VIDEO_METRICS)}"
        )
    if not samples.is_video and vid:
        raise QditError(
            f"{', '.join(vid)}: video metric(s), but the samples are images {list(samples.images.shape)}, "
            "not clips [N, T, H, W, C]"
        )
    if img and ref.images is not None and ref.images.ndim == 5:
        raise QditError(f"image metrics need reference images; {ref.source} holds clips")
    if vid:
        return _evaluate_video(
            samples,
            ref,
            vid,
            device=device,
            progress=progress,
            video_features=video_features,
            i3d_path=i3d_path,
            i3d_features=i3d_features,
            video=video,
            clipnet=clipnet,
        )
    inc = [m for m in metrics if m in INCEPTION_METRICS]
    dom = [m for m in metrics if m in DOMAIN_METRICS]
    n = samples.images.shape[0]

    if dom:
        from qdit.eval.domain import DomainFeatures, check_domain_images, check_domain_labels

        check_domain_images(samples.images, "samples")
        if "class_acc" in dom and samples.labels is None:
            raise QditError("class_acc needs the class labels of the samples ('labels' in the samples .npz)")
        if "class_acc" in dom:
            check_domain_labels(samples.labels, n, "samples: labels")
        if "domain_fd" in dom:
            if ref.images is None:
                raise QditError(
                    f"domain_fd needs reference images; {ref.source} has only precomputed statistics"
                )
            check_domain_images(ref.images, f"reference {ref.source}")
        if "domain_is" in dom and n < 10:
            raise QditError(f"domain_is needs at least 10 samples (10 splits), got {n}")
        if domain is None:
            domain = DomainFeatures(device=device, progress=progress)
    if inc:
        if inception is None:
            from qdit.eval.inception import InceptionFeatures

            inception = InceptionFeatures(
                batch_size=batch_size, bf16=bf16, mode=inception_mode, device=device, progress=progress
            )
        if "is" in inc and not inception.has_logits:
            raise QditError(
                "Inception Score needs the Inception classification layer, which the local Inception file "
                "(default_1.pt, pool features only) does not have; for 28x28 Fashion-MNIST samples use domain_is"
            )
        if ref.images is None:
            if "sfid" in inc and "mu_s" not in ref.stats:
                raise QditError(f"sfid needs reference images or 'mu_s'/'sigma_s'; {ref.source} has neither")
            if {"precision", "recall"} & set(inc) and "features" not in ref.stats:
                raise QditError(
                    f"precision/recall need reference images or 'features'; {ref.source} has neither"
                )
        if ("fid" in inc or "sfid" in inc) and n < 2:
            raise QditError(f"FID needs at least 2 samples, got {n}")
        if {"precision", "recall"} & set(inc) and n <= PR_K:
            raise QditError(f"precision/recall need more than {PR_K} samples, got {n}")

    result: dict[str, float] = {}
    if dom:
        from qdit.eval.domain import domain_metrics

        assert domain is not None
        result.update(domain_metrics(samples.images, samples.labels, ref, domain, dom))
    if inc:
        from qdit.eval.refstats import inception_refstats

        assert inception is not None
        ref_stats = inception_refstats(ref, inception)
        out = inception.extract(samples.images, spatial="sfid" in inc, desc="samples (inception)")
        if "fid" in inc:
            mu, sigma = feature_stats(out.pool)
            result["fid"] = frechet_distance(mu, sigma, ref_stats.mu, ref_stats.sigma)
        if "sfid" in inc:
            assert out.spatial is not None and ref_stats.mu_s is not None and ref_stats.sigma_s is not None
            mu, sigma = feature_stats(out.spatial)
            result["sfid"] = frechet_distance(mu, sigma, ref_stats.mu_s, ref_stats.sigma_s)
        if {"precision", "recall"} & set(inc):
            assert ref_stats.features is not None
            p, r = precision_recall(
                np.asarray(ref_stats.features), out.pool, k=PR_K, real_radii=ref_stats.radii
            )
            if "precision" in inc:
                result["precision"] = p
            if "recall" in inc:
                result["recall"] = r
    order = [*metrics, "domain_is_std"]
    return {k: result[k] for k in order if k in result}


def video_extractor(
    video_features: str = "clipnet",
    *,
    i3d_path: str | None = None,
    i3d_features: str = "logits",
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> ClipExtractor:
    """FVD's feature extractor: ClipNet (``"clipnet"``) or I3D from the local file ``i3d_path``
    (``"i3d"``); ``batch_size`` None keeps the extractor's default."""
    if video_features not in VIDEO_FEATURES:
        raise QditError(f"video features must be one of {', '.join(VIDEO_FEATURES)}, got {video_features!r}")
    if video_features == "i3d" and i3d_path is None:
        raise QditError(
            "--video-features i3d needs --i3d PATH: a local pytorch-i3d state dict (qdit never downloads it)"
        )
    if video_features == "clipnet" and i3d_path is not None:
        raise QditError("--i3d PATH is for --video-features i3d (FVD on I3D features), not clipnet")
    kw = {"batch_size": batch_size} if batch_size is not None else {}
    if video_features == "i3d":
        from qdit.eval.i3d import I3DFeatures

        return I3DFeatures(i3d_path, features=i3d_features, device=device, progress=progress, **kw)
    from qdit.eval.videofeat import VideoFeatures

    return VideoFeatures(device=device, progress=progress, **kw)


def _evaluate_video(
    samples: Samples,
    ref: Reference,
    metrics: list[str],
    *,
    device: str | torch.device,
    progress: bool,
    video_features: str,
    i3d_path: str | None,
    i3d_features: str,
    video: ClipExtractor | None,
    clipnet: VideoFeatures | None,
) -> dict[str, float]:
    from qdit.eval.video import FRAME_METRICS, check_video_request, video_metrics
    from qdit.eval.videofeat import VideoFeatures, check_clipnet_clips

    # cheap checks first, so that a bad request fails before any network is loaded
    check_video_request(samples.images, samples.labels, ref, metrics)
    if "fvd" in metrics and video is None and video_features == "clipnet":
        check_clipnet_clips(samples.images, "samples")
        check_clipnet_clips(ref.images, f"reference {ref.source}")  # type: ignore[arg-type]
    if video is None and "fvd" in metrics:
        video = video_extractor(
            video_features, i3d_path=i3d_path, i3d_features=i3d_features, device=device, progress=progress
        )
    if clipnet is None and set(FRAME_METRICS) & set(metrics):
        # one ClipNet pass gives FVD's clip features and the frame outputs
        clipnet = (
            video if isinstance(video, VideoFeatures) else VideoFeatures(device=device, progress=progress)
        )
    return video_metrics(samples.images, samples.labels, ref, metrics, features=video, clipnet=clipnet)
