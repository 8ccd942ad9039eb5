"""qdit: accurate post-training quantization of diffusion transformers (Q-DiT and beyond).

The public API is loaded lazily, so ``import qdit`` stays light (no torch until it is used)::

    import qdit
    model = qdit.load_model("embedded")
    recipe, report = qdit.search_recipe(model)          # optional: a searched per-layer recipe
    model = qdit.quantize(model, recipe)                  # or qdit.Recipe.baseline("qdit")
    qdit.save(model, "out/")
    images, labels = qdit.sample(qdit.load("out/"), 64)
    metrics = qdit.evaluate(images, "fashion-mnist-test", labels=labels)

(``qdit.search`` is the search package; its facade is ``qdit.search_recipe``.)
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "load_model": "qdit.api",
    "quantize": "qdit.api",
    "search_recipe": "qdit.api",
    "sample": "qdit.api",
    "evaluate": "qdit.api",
    "SearchConfig": "qdit.search.driver",
    "save": "qdit.io.checkpoint",
    "load": "qdit.io.checkpoint",
    "Recipe": "qdit.recipe",
    "QuantSpec": "qdit.recipe",
    "PerGroup": "qdit.quant.rules",
    "PerChannel": "qdit.quant.rules",
    "PerToken": "qdit.quant.rules",
    "PerSample": "qdit.quant.rules",
    "PerFrame": "qdit.quant.rules",
    "Static": "qdit.quant.rules",
    "CalibConfig": "qdit.calib",
    "Calibration": "qdit.calib",
    "QditError": "qdit.errors",
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("qdit")
        except PackageNotFoundError:
            return "unknown"
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qdit' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
