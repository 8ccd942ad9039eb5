"""Evaluation: Inception and domain features, Fréchet distance, IS, precision/recall, ``.npz`` I/O; FVD
and temporal metrics of clips.

Names are imported lazily (``import qdit.eval`` loads neither torch nor scipy); see the submodules:
``metrics`` (pure numpy), ``inception``, ``domain``, ``npz``, ``refstats``, ``evaluate``, ``cache``,
``video`` (FVD, frame accuracy, consistency, motion), ``videofeat`` (ClipNet), ``i3d``, ``features`` (the
feature spaces a search scores samples in).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "frechet_distance": "qdit.eval.metrics",
    "feature_stats": "qdit.eval.metrics",
    "inception_score": "qdit.eval.metrics",
    "precision_recall": "qdit.eval.metrics",
    "softmax": "qdit.eval.metrics",
    "InceptionFeatures": "qdit.eval.inception",
    "inception_weights_path": "qdit.eval.inception",
    "DomainFeatures": "qdit.eval.domain",
    "domain_metrics": "qdit.eval.domain",
    "Samples": "qdit.eval.npz",
    "Reference": "qdit.eval.npz",
    "load_samples": "qdit.eval.npz",
    "save_samples": "qdit.eval.npz",
    "load_reference": "qdit.eval.npz",
    "RefStats": "qdit.eval.refstats",
    "inception_refstats": "qdit.eval.refstats",
    "evaluate": "qdit.eval.evaluate",
    "ALL_METRICS": "qdit.eval.evaluate",
    "cache_dir": "qdit.eval.cache",
    "VideoFeatures": "qdit.eval.videofeat",
    "load_clipnet": "qdit.eval.videofeat",
    "I3DFeatures": "qdit.eval.i3d",
    "load_i3d": "qdit.eval.i3d",
    "video_metrics": "qdit.eval.video",
    "FeatureSpace": "qdit.eval.features",
    "feature_space": "qdit.eval.features",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'qdit.eval' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
