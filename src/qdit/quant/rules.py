"""The rules every quantizer setting obeys, each written once: the legal bit widths, what a group size
is and "a group size divides the width", and the registry of weight quantization methods.

Everything else (the tensor math in :mod:`qdit.quant`, :class:`qdit.recipe.QuantSpec`, the layers in
:mod:`qdit.nn`, the search space, the CLI) calls these instead of restating them, so a rule changes in
one place. This module imports nothing (no torch): recipes and the CLI check their input with it before
anything heavy is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

# the bit widths every quantizer (weights and activations, fake and integer) supports: below 2 bits an
# asymmetric grid has no interior level, above 8 the codes no longer fit the uint8 storage and int8 kernels
MIN_BITS = 2
MAX_BITS = 8


def bits_range() -> str:
    """``"2..8"``: the legal bit widths as messages and help texts write them."""
    return f"{MIN_BITS}..{MAX_BITS}"


def check_bits(bits: object, name: str = "bits", error: type[Exception] = ValueError) -> int:
    """``bits`` if it is an integer in :data:`MIN_BITS`..:data:`MAX_BITS`, else ``error`` naming ``name``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise error(f"{name} must be an integer in {bits_range()}, got {bits!r}")
    return bits


def check_group_size(group: object, name: str = "group size", error: type[Exception] = ValueError) -> int:
    """``group`` if it is a group size: an integer >= 0 (0: one group, the whole row); else ``error`` naming
    ``name``."""
    if isinstance(group, bool) or not isinstance(group, int) or group < 0:
        raise error(f"{name} must be an integer >= 0 (0 = one group per row), got {group!r}")
    return group


def divides(group: int, width: int) -> bool:
    """Whether groups of ``group`` channels tile a row of ``width`` exactly (0: one group, the whole row)."""
    return group == 0 or (group > 0 and width % group == 0)


def check_divides(
    group: int, width: int, what: str = "group size", layer: str = "", error: type[Exception] = ValueError
) -> int:
    """``group`` if it divides ``width`` (see :func:`divides`), else ``error``: ``"layer L: <what> 48 does
    not divide its input width 64"`` with a ``layer``, ``"<what> 48 does not divide the width 64"`` without."""
    if not divides(group, width):
        where = f"layer {layer}: " if layer else ""
        raise error(f"{where}{what} {group} does not divide {'its input' if layer else 'the'} width {width}")
    return group


@dataclass(frozen=True)
class WeightMethod:
    """How a weight matrix is rounded to its grid (the implementations live in :mod:`qdit.quant.weight`
    and :mod:`qdit.quant.gptq`; :func:`qdit.quant.methods.quantize_by_method` dispatches on the name)."""

    name: str
    summary: str
    needs_hessian: bool = False  # GPTQ's error feedback needs the calibrated second moments of the inputs


WEIGHT_METHODS: dict[str, WeightMethod] = {
    m.name: m
    for m in (
        WeightMethod("rtn", "round to nearest on the min/max range of each group"),
        WeightMethod("mse", "round to nearest on the clipped range that minimises the group's error"),
        WeightMethod(
            "gptq", "GPTQ: column by column, rounding error fed back through the inverse Hessian", True
        ),
    )
}


def weight_method(
    name: object, error: type[Exception] = ValueError, option: str = "weight_method"
) -> WeightMethod:
    """The registered method ``name``, else ``error`` naming ``option`` and listing the registered ones."""
    method = WEIGHT_METHODS.get(name) if isinstance(name, str) else None
    if method is None:
        raise error(f"{option} must be one of {', '.join(WEIGHT_METHODS)}, got {name!r}")
    return method
