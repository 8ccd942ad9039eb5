"""Quantization recipes: what to quantize and how, per layer. Validated dataclasses with a JSON round-trip.

A :class:`QuantSpec` says how one linear layer is quantized; a :class:`Recipe` holds a default spec,
per-layer overrides keyed by module name (an exact name or an ``fnmatch`` pattern), and which layers to
quantize beyond the model's default set (``include``: a named group such as ``"adaln"`` or a pattern)
or to leave alone (``exclude``). Which layers a model has, and what its named groups are, is the model
adapter's business (:mod:`qdit.models.adapter`); :meth:`Recipe.resolve` gets them as plain data.

The rules themselves (bit widths, group divisibility, weight methods) are :mod:`qdit.quant.rules`'s; this
module applies them to specs. It is torch-free.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from qdit.errors import QditError
from qdit.quant import rules
from qdit.quant.rules import (
    WEIGHT_METHODS,
    ActGranularity,
    GroupGranularity,
    check_bits,
    check_divides,
    parse_act_granularity,
    parse_group,
    weight_method,
)

RECIPE_VERSION = 1
ACT_GRANULARITIES = rules.ACT_GRANULARITIES  # the spellings (token, sample, frame, static), kept here too
DYNAMIC_GRANULARITIES = rules.DYNAMIC_GRANULARITIES  # ranges computed at run time (no calibration)
BASELINES = ("rtn", "rtn-token", "smoothquant", "ptq4dit", "gptq", "qdit")
BALANCE_METHODS = ("smoothquant", "csb")  # see qdit.quant.balance


class RecipeError(QditError, ValueError):
    """An invalid quantization spec or recipe, or one that does not fit the model."""


def _close(word: str, choices: Iterable[str], n: int = 3) -> str:
    found = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.5)
    return f"; did you mean {', '.join(repr(f) for f in found)}?" if found else ""


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class QuantSpec:
    """How one linear layer is quantized.

    ``w_group`` / ``a_group``: group size along the input dimension; 0 means one group per output
    channel for weights and per token (the whole row) for activations (per tensor when ``static``).
    Either is given as its spelling (an int) or as a value of :mod:`qdit.quant.rules` (``PerGroup(128)``,
    ``PerChannel()``), and ``act_granularity`` as ``"token"`` or ``PerToken()`` and so on; the spec keeps
    the spellings (the JSON of recipes and ``qdit.json`` is unchanged) and :attr:`weight_granularity`,
    :attr:`act_group_granularity` and :attr:`activation_granularity` give the values.
    ``a_bits=None`` leaves activations in floating point. ``act_granularity``: ``token`` (dynamic, per
    token and group), ``sample`` (dynamic, per sample and group over all of its tokens; for video, per
    clip over all of its frames), ``frame`` (dynamic, per frame of each clip and group over the frame's
    tokens; the same as ``sample`` for image models) or ``static`` (calibrated per group). What a clip and
    a frame are comes from the model's adapter, not from the recipe. ``weight_method``: ``rtn`` (min/max), ``mse`` (clip search) or ``gptq``.
    ``balance``: activation-weight channel balancing (needs calibration; :mod:`qdit.quant.balance`):
    ``None`` (``"none"`` is accepted), ``"smoothquant"`` (factors ``max|X_j|^alpha / max|W_j|^(1-alpha)``,
    ``alpha = smooth_alpha``, 0.5 when not given) or ``"csb"`` (PTQ4DiT-style channel-wise salience
    balancing with timestep-weighted activation maxima; takes no alpha). ``smooth_alpha``: SmoothQuant's
    strength in [0, 1]. A spec with ``smooth_alpha`` and no ``balance`` (what recipes written before
    ``balance`` existed hold) means ``balance="smoothquant"``.
    """

    w_bits: int = 4
    a_bits: int | None = 8
    w_group: int | GroupGranularity = 128
    a_group: int | GroupGranularity = 128
    act_granularity: str | ActGranularity = "token"
    weight_method: str = "rtn"
    w_symmetric: bool = False
    a_symmetric: bool = False
    smooth_alpha: float | None = None
    balance: str | None = None

    def __post_init__(self) -> None:
        for name in ("w_bits", "a_bits"):
            v = getattr(self, name)
            if name == "a_bits" and v is None:
                continue
            check_bits(v, name, RecipeError)
        for name in ("w_group", "a_group"):  # kept as spellings: the fields compare, hash and save as before
            object.__setattr__(self, name, parse_group(getattr(self, name), name, RecipeError).spelling)
        gran = parse_act_granularity(self.act_granularity, "act_granularity", RecipeError)
        object.__setattr__(self, "act_granularity", gran.spelling)
        weight_method(self.weight_method, RecipeError)
        for name in ("w_symmetric", "a_symmetric"):
            if not isinstance(getattr(self, name), bool):
                raise RecipeError(f"{name} must be true or false, got {getattr(self, name)!r}")
        a = self.smooth_alpha
        if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 <= a <= 1.0):
            raise RecipeError(f"smooth_alpha must be a number in [0, 1] or null, got {a!r}")
        b = self.balance
        if b == "none":
            b = None
        if b is not None and b not in BALANCE_METHODS:
            raise RecipeError(
                f"balance must be one of none, {', '.join(BALANCE_METHODS)}, got {b!r}"
                f"{_close(str(b), BALANCE_METHODS)}"
            )
        if b is None and a is not None:
            b = "smoothquant"  # the meaning of smooth_alpha before balance existed
        if b == "smoothquant" and a is None:
            a = 0.5
        if b == "csb" and a is not None:
            raise RecipeError("balance 'csb' takes no smooth_alpha (its factors are sqrt(max|X| / max|W|))")
        object.__setattr__(self, "balance", b)  # one spelling per meaning, so specs compare equal
        object.__setattr__(self, "smooth_alpha", a)

    @property
    def weight_granularity(self) -> GroupGranularity:
        """``PerGroup(w_group)``, or ``PerChannel()`` for ``w_group`` 0."""
        return parse_group(self.w_group)

    @property
    def act_group_granularity(self) -> GroupGranularity:
        """``PerGroup(a_group)``, or ``PerChannel()`` (the whole row) for ``a_group`` 0."""
        return parse_group(self.a_group)

    @property
    def activation_granularity(self) -> ActGranularity:
        """``PerToken()``, ``PerSample()``, ``PerFrame()`` or ``Static()``."""
        return parse_act_granularity(self.act_granularity)

    @property
    def quantizes_activations(self) -> bool:
        return self.a_bits is not None

    @property
    def needs_hessian(self) -> bool:
        return WEIGHT_METHODS[self.weight_method].needs_hessian

    @property
    def needs_calibration(self) -> bool:
        static = self.a_bits is not None and not self.activation_granularity.dynamic
        return self.needs_hessian or static or self.balance is not None

    def check_width(self, layer: str, width: int) -> None:
        """Raise unless both group sizes divide the layer's input width."""
        checks = [("weight group", self.w_group)]
        if self.a_bits is not None:
            checks.append(("activation group", self.a_group))
        for label, g in checks:
            check_divides(g, width, label, layer, RecipeError)

    def label(self) -> str:
        """Short description, e.g. ``W4A8 g128/128 token rtn``."""
        a = f"A{self.a_bits}" if self.a_bits is not None else "A16"
        extra = ""
        if self.balance == "smoothquant":
            extra = f" smooth{self.smooth_alpha:g}"
        elif self.balance is not None:
            extra = f" {self.balance}"
        gran = f" {self.act_granularity}" if self.a_bits is not None else ""
        return f"W{self.w_bits}{a} g{self.w_group}/{self.a_group}{gran} {self.weight_method}{extra}"

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON data; ``balance`` only where ``smooth_alpha`` does not imply it (``csb``),
        so specs without it keep the JSON, and the checksums, they had before the field existed."""
        data = asdict(self)
        if data["balance"] is None or data["balance"] == "smoothquant":
            del data["balance"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantSpec:
        if not isinstance(data, Mapping):
            raise RecipeError(f"a quantization spec must be a JSON object, got {type(data).__name__}")
        check_spec_fields(data, "spec")
        return cls(**dict(data))


SPEC_FIELDS = tuple(f.name for f in fields(QuantSpec))


def updated(spec: QuantSpec, changes: Mapping[str, Any]) -> QuantSpec:
    """``replace(spec, **changes)`` with ``balance`` and ``smooth_alpha`` changed together, as recipe
    overrides mean them: ``smooth_alpha`` alone keeps its meaning from before ``balance`` existed (a number:
    SmoothQuant with it; null: no SmoothQuant), and ``balance`` alone drops an alpha that no longer
    applies (keeping it from smoothquant to smoothquant)."""
    changes = dict(changes)
    if "balance" in changes and "smooth_alpha" not in changes:
        keep = changes["balance"] == "smoothquant" and spec.balance == "smoothquant"
        changes["smooth_alpha"] = spec.smooth_alpha if keep else None
    elif "smooth_alpha" in changes and "balance" not in changes:
        if changes["smooth_alpha"] is not None:
            changes["balance"] = "smoothquant"
        elif spec.balance == "smoothquant":
            changes["balance"] = None
    return replace(spec, **changes)


def check_spec_fields(data: Mapping[str, Any], where: str) -> None:
    for key in data:
        if key not in SPEC_FIELDS:
            raise RecipeError(
                f"{where}: unknown field {key!r}{_close(str(key), SPEC_FIELDS)} (fields: {', '.join(SPEC_FIELDS)})"
            )


def _matches(name: str, key: str) -> bool:
    return name == key or fnmatchcase(name, key)


@dataclass
class Recipe:
    """A default :class:`QuantSpec`, per-layer overrides, and include/exclude selections.

    ``overrides`` maps an exact module name or an ``fnmatch`` pattern to the fields that differ from the
    default (a :class:`QuantSpec` given here is stored as all of its fields). A layer's spec is the
    default, updated by every matching pattern in insertion order, then by its exact name. Every key
    must reach at least one quantized layer.
    """

    default: QuantSpec = field(default_factory=QuantSpec)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    version: int = RECIPE_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.default, Mapping):
            self.default = QuantSpec.from_dict(self.default)
        if not isinstance(self.default, QuantSpec):
            raise RecipeError(f"recipe default must be a QuantSpec, got {type(self.default).__name__}")
        if not _is_int(self.version) or self.version < 1:
            raise RecipeError(f"recipe version must be a positive integer, got {self.version!r}")
        if self.version > RECIPE_VERSION:
            raise RecipeError(
                f"recipe version {self.version} is newer than this qdit supports ({RECIPE_VERSION})"
            )
        if not isinstance(self.overrides, Mapping):
            raise RecipeError("recipe overrides must map layer names or patterns to spec fields")
        normalized: dict[str, dict[str, Any]] = {}
        for key, value in self.overrides.items():
            if not isinstance(key, str) or not key:
                raise RecipeError(f"recipe override keys must be non-empty strings, got {key!r}")
            if isinstance(value, QuantSpec):
                spec, value = value, value.to_dict()
                if spec.balance != self.default.balance:  # all of its fields, balance included
                    value["balance"] = spec.balance
            if not isinstance(value, Mapping):
                raise RecipeError(
                    f"override {key!r}: expected an object of spec fields, got {type(value).__name__}"
                )
            check_spec_fields(value, f"override {key!r}")
            try:
                spec = updated(self.default, value)
            except RecipeError as exc:
                raise RecipeError(f"override {key!r}: {exc}") from None
            normalized[key] = {k: getattr(spec, k) for k in value}  # granularity values as their spellings
        self.overrides = normalized
        for name in ("include", "exclude"):
            items = getattr(self, name)
            if isinstance(items, str) or not all(isinstance(i, str) and i for i in items):
                raise RecipeError(
                    f"recipe {name} must be a list of group names or layer patterns, got {items!r}"
                )
            setattr(self, name, list(items))

    # --- construction helpers ---------------------------------------------------------------
    @classmethod
    def baseline(cls, name: str, w_bits: int = 4, a_bits: int | None = 8, **spec_fields: Any) -> Recipe:
        """A baseline from the literature, all with per-output-channel weights (``w_group`` 0):

        * ``rtn``: RTN weights, static per-tensor activations (the paper's RTN row);
        * ``rtn-token``: RTN weights, dynamic per-token activations;
        * ``smoothquant``: SmoothQuant (alpha 0.5), RTN weights, static per-tensor activations;
        * ``ptq4dit``: PTQ4DiT-style channel-wise salience balancing (``balance="csb"``), RTN weights,
          static per-tensor activations (no block reconstruction; see :mod:`qdit.quant.balance`);
        * ``gptq``: GPTQ weights, dynamic per-token activations;
        * ``qdit``: Q-DiT without search: group 128 for weights and activations, per-token dynamic.
        """
        base: dict[str, Any] = dict(w_bits=w_bits, a_bits=a_bits, w_group=0, a_group=0)
        presets: dict[str, dict[str, Any]] = {
            "rtn": dict(act_granularity="static", weight_method="rtn"),
            "rtn-token": dict(act_granularity="token", weight_method="rtn"),
            "smoothquant": dict(act_granularity="static", weight_method="rtn", balance="smoothquant"),
            "ptq4dit": dict(act_granularity="static", weight_method="rtn", balance="csb"),
            "gptq": dict(act_granularity="token", weight_method="gptq"),
            "qdit": dict(act_granularity="token", weight_method="rtn", w_group=128, a_group=128),
        }
        if name not in presets:
            raise RecipeError(
                f"unknown baseline {name!r}{_close(name, presets)} (known: {', '.join(presets)})"
            )
        check_spec_fields(spec_fields, f"baseline {name!r}")
        return cls(default=QuantSpec(**{**base, **presets[name], **spec_fields}))

    def with_groups(self, groups: Mapping[str, int]) -> Recipe:
        """A copy where each named layer gets group size ``g`` for both weights and activations."""
        overrides = {k: dict(v) for k, v in self.overrides.items()}
        for name, g in groups.items():
            overrides.setdefault(name, {}).update(w_group=g, a_group=g)
        return Recipe(replace(self.default), overrides, list(self.include), list(self.exclude), self.version)

    # --- resolution against a model ---------------------------------------------------------
    def select(
        self, layers: Mapping[str, int], groups: Mapping[str, Collection[str]] | None = None
    ) -> list[str]:
        """Names of the layers to quantize, in model order.

        ``layers``: every candidate linear layer (name -> input width); ``groups``: named groups of
        them; ``groups["default"]`` (all of ``layers`` when absent) is quantized unless excluded.
        """
        groups = dict(groups or {})
        default = set(groups.get("default", layers))
        chosen = {n for n in layers if n in default}
        for item in self.include:
            chosen |= self._expand("include", item, layers, groups)
        for item in self.exclude:
            chosen -= self._expand("exclude", item, layers, groups)
        return [n for n in layers if n in chosen]

    @staticmethod
    def _expand(
        where: str, item: str, layers: Mapping[str, int], groups: Mapping[str, Collection[str]]
    ) -> set[str]:
        if item in groups:
            return set(groups[item])
        found = {n for n in layers if _matches(n, item)}
        if not found:
            named = [g for g in groups if g != "default"]
            hint = f" (named groups: {', '.join(named)})" if named else ""
            raise RecipeError(
                f"recipe {where} {item!r} matches no layer{_close(item, [*named, *layers])}{hint}"
            )
        return found

    def spec_for(self, name: str) -> QuantSpec:
        """The spec of layer ``name`` (without checking that it exists)."""
        spec = self.default
        for key, value in self.overrides.items():  # one after another: a later balance / smooth_alpha wins
            if key != name and fnmatchcase(name, key):
                spec = updated(spec, value)
        return updated(spec, self.overrides[name]) if name in self.overrides else spec

    def resolve(
        self, layers: Mapping[str, int], groups: Mapping[str, Collection[str]] | None = None
    ) -> dict[str, QuantSpec]:
        """Per-layer specs for the selected layers (see :meth:`select`), validated against their widths.

        Raises :class:`RecipeError` for an override that reaches no quantized layer (with close
        matches), and for a group size that does not divide a layer's input width.
        """
        selected = self.select(layers, groups)
        for key in self.overrides:
            if not any(_matches(n, key) for n in selected):
                if any(_matches(n, key) for n in layers):
                    raise RecipeError(
                        f"recipe override {key!r} names layers that are not quantized; add them to include"
                    )
                raise RecipeError(
                    f"recipe override {key!r} matches no quantized layer{_close(key, selected)}"
                )
        specs = {}
        for name in selected:
            spec = self.spec_for(name)
            spec.check_width(name, layers[name])
            specs[name] = spec
        return specs

    # --- serialization ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "default": self.default.to_dict(),
            "overrides": {k: dict(v) for k, v in self.overrides.items()},
            "include": list(self.include),
            "exclude": list(self.exclude),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        if not isinstance(data, Mapping):
            raise RecipeError(f"a recipe must be a JSON object, got {type(data).__name__}")
        known = ("version", "default", "overrides", "include", "exclude")
        for key in data:
            if key not in known:
                raise RecipeError(
                    f"recipe: unknown field {key!r}{_close(str(key), known)} (fields: {', '.join(known)})"
                )
        if "version" not in data:
            raise RecipeError("recipe: missing 'version'")
        default = data.get("default", {})
        return cls(
            default=QuantSpec.from_dict(default) if isinstance(default, Mapping) else default,
            overrides=data.get("overrides", {}),
            include=data.get("include", []),
            exclude=data.get("exclude", []),
            version=data["version"],
        )

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecipeError(f"recipe is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> None:
        from qdit.io.atomic import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Recipe:
        p = Path(path)
        try:
            text = p.read_text()
        except FileNotFoundError:
            raise RecipeError(f"recipe not found: {p}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeError(f"cannot read recipe {p}: {exc}") from None
        try:
            return cls.from_json(text)
        except RecipeError as exc:
            raise RecipeError(f"{p}: {exc}") from None
