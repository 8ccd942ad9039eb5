"""Quantized modules, module swapping and kernel choice (no architecture knowledge)."""

from qdit.nn.quant_linear import ActQuantizer, FloatWeight, QuantLinear, smooth_factors
from qdit.nn.swap import (
    KERNELS,
    FusedActivation,
    choose_kernel,
    freeze,
    fuse,
    kernel_paths,
    kernel_summary,
    quant_layers,
    set_submodule,
    swap_layers,
    unfuse,
)

__all__ = [
    "KERNELS",
    "ActQuantizer",
    "FloatWeight",
    "FusedActivation",
    "QuantLinear",
    "choose_kernel",
    "freeze",
    "fuse",
    "kernel_paths",
    "kernel_summary",
    "quant_layers",
    "set_submodule",
    "smooth_factors",
    "swap_layers",
    "unfuse",
]
