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

INCEPTION_METRICS = ("fid", "sfid", "is", "precision", "recall")
DOMAIN_METRICS = ("domain_fd", "class_acc", "domain_is")
ALL_METRICS = INCEPTION_METRICS + DOMAIN_METRICS


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
    """fid, sfid, precision, recall; plus the domain metrics for 28x28 grayscale samples
    (class_acc only when the samples have labels)."""
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
    device: str | torch.device = "cpu",
    progress: bool = True,
    inception: InceptionFeatures | None = None,
    domain: DomainFeatures | None = None,
) -> dict[str, float]:
    """The requested metrics of ``samples`` against ``ref`` (see :data:`ALL_METRICS`).

    ``inception``/``domain`` replace the default extractors (otherwise built from ``device``,
    ``progress`` and, for Inception, ``batch_size`` and ``bf16``). Reference statistics come from the
    cache or are computed once (see :mod:`qdit.eval.refstats`). ``domain_is`` also adds ``domain_is_std``.
    """
    metrics = parse_metrics(",".join(metrics))
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

            inception = InceptionFeatures(batch_size=batch_size, bf16=bf16, device=device, progress=progress)
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
