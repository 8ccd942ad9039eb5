"""Pure tensor math of quantization: qparams, (fake) quantization, MSE clip, GPTQ, bit packing, and the
rules every setting obeys (:mod:`qdit.quant.rules`), granularities as values (``PerGroup(128)``,
``PerChannel()``, ``PerToken()``, ``PerSample()``, ``PerFrame()``, ``Static()``) included.

Names are imported lazily, so that ``qdit.quant.rules`` (torch-free) can be used by the recipe and the
CLI without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "csb_factors": "qdit.quant.balance",
    "smooth_factors": "qdit.quant.balance",
    "spearman": "qdit.quant.balance",
    "NonFiniteError": "qdit.quant.finite",
    "check_finite": "qdit.quant.finite",
    "check_finite_tensors": "qdit.quant.finite",
    "HessianAccumulator": "qdit.quant.gptq",
    "gptq_quantize": "qdit.quant.gptq",
    "pack_bits": "qdit.quant.packing",
    "pack_int32": "qdit.quant.packing",
    "unpack_bits": "qdit.quant.packing",
    "unpack_int32": "qdit.quant.packing",
    "ScaleRangeWarning": "qdit.quant.primitives",
    "code_range": "qdit.quant.primitives",
    "dequantize": "qdit.quant.primitives",
    "fake_quantize": "qdit.quant.primitives",
    "fake_quantize_range": "qdit.quant.primitives",
    "group_range": "qdit.quant.primitives",
    "group_view": "qdit.quant.primitives",
    "minmax": "qdit.quant.primitives",
    "mse_clip_range": "qdit.quant.primitives",
    "qparams": "qdit.quant.primitives",
    "quantize": "qdit.quant.primitives",
    "ACT_GRANULARITIES": "qdit.quant.rules",
    "MAX_BITS": "qdit.quant.rules",
    "MIN_BITS": "qdit.quant.rules",
    "WEIGHT_METHODS": "qdit.quant.rules",
    "check_bits": "qdit.quant.rules",
    "check_divides": "qdit.quant.rules",
    "check_group_size": "qdit.quant.rules",
    "divides": "qdit.quant.rules",
    "parse_act_granularity": "qdit.quant.rules",
    "parse_group": "qdit.quant.rules",
    "PerChannel": "qdit.quant.rules",
    "PerFrame": "qdit.quant.rules",
    "PerGroup": "qdit.quant.rules",
    "PerSample": "qdit.quant.rules",
    "PerToken": "qdit.quant.rules",
    "Static": "qdit.quant.rules",
    "QWeight": "qdit.quant.weight",
    "quantize_weight": "qdit.quant.weight",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'qdit.quant' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
