"""The rules every quantizer setting obeys, each written once: the legal bit widths, what a group size
is and "a group size divides the width", the granularities (as values, with one parser from their
spellings), and the registry of weight quantization methods.

Everything else (the tensor math in :mod:`qdit.quant`, :class:`qdit.recipe.QuantSpec`, the layers in
:mod:`qdit.nn`, the search space, the CLI) calls these instead of restating them, so a rule changes in
one place. This module imports nothing (no torch): recipes and the CLI check their input with it before
anything heavy is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

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


# --- granularities as values --------------------------------------------------------------------
# A granularity is a value (``PerGroup(128)``, ``PerToken()``), torchao style. Recipes, qdit.json and the
# CLI keep their spellings (a group size is an int, 0 = one group per row; an activation granularity is
# one of ACT_GRANULARITIES): ``parse_*`` turns a spelling (or a value) into a value, ``.spelling`` back.


@dataclass(frozen=True)
class PerGroup:
    """One range per group of ``size`` consecutive input channels (spelled ``size``)."""

    size: int

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(
                f"PerGroup size must be an integer >= 1 (PerChannel() for one group per row), got {self.size!r}"
            )

    @property
    def spelling(self) -> int:
        return self.size


@dataclass(frozen=True)
class PerChannel:
    """One group spanning the whole input row: one range per output channel for weights, per row
    (token, sample or frame) for activations (spelled ``0``)."""

    @property
    def spelling(self) -> int:
        return 0


GroupGranularity = PerGroup | PerChannel


@dataclass(frozen=True)
class _ActGranularity:
    name: ClassVar[str]
    dynamic: ClassVar[bool] = True  # ranges computed at run time, no calibration
    layout_aware: ClassVar[bool] = False  # what a sample / frame is comes from the layer's layout

    @property
    def spelling(self) -> str:
        return self.name


@dataclass(frozen=True)
class PerToken(_ActGranularity):
    """Dynamic: one activation range per token (row) and group (spelled ``"token"``)."""

    name: ClassVar[str] = "token"


@dataclass(frozen=True)
class PerSample(_ActGranularity):
    """Dynamic: one range per sample (for video, per clip) and group, over all of its tokens (``"sample"``)."""

    name: ClassVar[str] = "sample"
    layout_aware: ClassVar[bool] = True


@dataclass(frozen=True)
class PerFrame(_ActGranularity):
    """Dynamic: one range per frame of each clip and group, over the frame's tokens; the same as
    :class:`PerSample` for image models (``"frame"``)."""

    name: ClassVar[str] = "frame"
    layout_aware: ClassVar[bool] = True


@dataclass(frozen=True)
class Static(_ActGranularity):
    """Calibrated: one range per group from calibrated per-channel ranges (``"static"``)."""

    name: ClassVar[str] = "static"
    dynamic: ClassVar[bool] = False


ActGranularity = PerToken | PerSample | PerFrame | Static
_ACT_VALUES: dict[str, ActGranularity] = {g.name: g for g in (PerToken(), PerSample(), PerFrame(), Static())}
ACT_GRANULARITIES = tuple(_ACT_VALUES)  # the spellings: token, sample, frame, static
DYNAMIC_GRANULARITIES = tuple(n for n, g in _ACT_VALUES.items() if g.dynamic)  # no calibration needed
LAYOUT_GRANULARITIES = tuple(n for n, g in _ACT_VALUES.items() if g.layout_aware)  # ranges a layout changes


def parse_group(
    value: object, name: str = "group size", error: type[Exception] = ValueError
) -> GroupGranularity:
    """A group granularity from its spelling (an int, checked by :func:`check_group_size`: 0 ->
    :class:`PerChannel`, ``n`` -> ``PerGroup(n)``) or as a value; else ``error`` naming ``name``."""
    if isinstance(value, (PerGroup, PerChannel)):
        return value
    size = check_group_size(value, name, error)
    return PerChannel() if size == 0 else PerGroup(size)


def parse_act_granularity(
    value: object, name: str = "act_granularity", error: type[Exception] = ValueError
) -> ActGranularity:
    """An activation granularity from its spelling (one of :data:`ACT_GRANULARITIES`) or as a value;
    else ``error`` naming ``name`` and listing the spellings."""
    if isinstance(value, _ActGranularity):
        return value  # type: ignore[return-value]
    found = _ACT_VALUES.get(value) if isinstance(value, str) else None
    if found is None:
        raise error(f"{name} must be one of {', '.join(ACT_GRANULARITIES)}, got {value!r}")
    return found


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
