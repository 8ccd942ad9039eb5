"""Quantized modules and module swapping (no architecture knowledge)."""

from qdit.nn.quant_linear import ActQuantizer, QuantLinear, smooth_factors
from qdit.nn.swap import quant_layers, set_groups, set_submodule, swap_layers

__all__ = [
    "ActQuantizer",
    "QuantLinear",
    "quant_layers",
    "set_groups",
    "set_submodule",
    "smooth_factors",
    "swap_layers",
]
