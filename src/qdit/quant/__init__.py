"""Pure tensor math of quantization: qparams, (fake) quantization, MSE clipping, GPTQ, bit packing."""

from qdit.quant.finite import NonFiniteError, check_finite, check_finite_tensors
from qdit.quant.gptq import HessianAccumulator, gptq_quantize
from qdit.quant.packing import pack_bits, pack_int32, unpack_bits, unpack_int32
from qdit.quant.primitives import (
    ScaleRangeWarning,
    check_bits,
    code_range,
    dequantize,
    fake_quantize,
    fake_quantize_range,
    group_range,
    group_view,
    minmax,
    mse_clip_range,
    qparams,
    quantize,
)
from qdit.quant.weight import QWeight, quantize_weight

__all__ = [
    "HessianAccumulator",
    "NonFiniteError",
    "QWeight",
    "ScaleRangeWarning",
    "check_bits",
    "check_finite",
    "check_finite_tensors",
    "code_range",
    "dequantize",
    "fake_quantize",
    "fake_quantize_range",
    "gptq_quantize",
    "group_range",
    "group_view",
    "minmax",
    "mse_clip_range",
    "pack_bits",
    "pack_int32",
    "qparams",
    "quantize",
    "quantize_weight",
    "unpack_bits",
    "unpack_int32",
]
