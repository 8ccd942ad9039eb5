"""The search space: which group sizes (and bit-widths) each quantized linear may take.

By default every layer may take the paper's (and the authors' search script's) group sizes
:data:`PAPER_GROUPS` ``{32, 64, 128, 192, 288}``, those of them that divide its input width. A
:class:`CandidateRule` derives the choices from each layer's width instead (e.g. ``{128, 256, 512,
768, 1152}`` for DiT-XL/2's fc2, width 4608), and explicit per-layer choices override both.

A *genome* is a tuple of ints, one value per :class:`Gene` of a :class:`SearchSpace`. By default a
layer has one gene (``"group"``) that sets both its weight group and its input-activation group, as
in Q-DiT; optionally the activation group is a separate gene (``"a_group"``, the weight group then
being ``"w_group"``) and the weight bit-width is a gene (``"w_bits"``) for mixed precision.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from qdit.errors import QditError
from qdit.quant.rules import check_bits, check_divides, divides

Genome = tuple[int, ...]

GENE_KINDS = ("group", "w_group", "a_group", "w_bits")
PAPER_GROUPS = (32, 64, 128, 192, 288)  # Q-DiT's search space, the same for every layer


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclass(frozen=True)
class CandidateRule:
    """How candidate group sizes are derived from a layer's input width.

    Candidates are divisors ``g`` of the width that are multiples of ``quantum`` (or powers of two
    below it), with ``g >= min_group`` and ``width / max_groups <= g <= width / min_groups``.
    If more than ``max_candidates`` qualify, the powers of two are kept first (kernel-friendly),
    then the coarsest others (cheapest); if fewer than ``min_candidates`` qualify, the range is
    widened upwards (``width / 2``, then the whole row).

    With the defaults a width of 1152 gives the paper's ``{32, 64, 128, 192, 288}``, 1024 gives
    ``{32, 64, 128, 256}`` and 256 gives ``{32, 64, 128, 256}``.
    """

    quantum: int = 32
    min_group: int = 32
    max_groups: int = 36
    min_groups: int = 4
    max_candidates: int = 5
    min_candidates: int = 4

    def __post_init__(self) -> None:
        for name in ("quantum", "min_group", "max_groups", "min_groups", "max_candidates", "min_candidates"):
            if getattr(self, name) < 1:
                raise QditError(f"candidate rule: {name} must be >= 1, got {getattr(self, name)}")
        if self.min_groups > self.max_groups:
            raise QditError("candidate rule: min_groups must be <= max_groups")


def candidate_groups(width: int, rule: CandidateRule | None = None) -> tuple[int, ...]:
    """Candidate group sizes for a layer whose input has ``width`` channels (ascending)."""
    rule = rule or CandidateRule()
    if width < 1:
        raise QditError(f"layer width must be >= 1, got {width}")
    divisors = [g for g in range(1, width + 1) if divides(g, width)]
    aligned = [g for g in divisors if g % rule.quantum == 0 or (_is_pow2(g) and g < rule.quantum)]
    lo = max(rule.min_group, width / rule.max_groups)
    hi = width / rule.min_groups
    picked = [g for g in aligned if lo <= g <= hi]
    for upper in (width / 2, width):  # too few: widen towards per-channel
        if len(picked) >= rule.min_candidates:
            break
        picked = [g for g in aligned if lo <= g <= upper]
    if not picked:  # a narrow or odd width: the whole row is always legal
        picked = [width]
    if len(picked) > rule.max_candidates:
        pow2 = [g for g in picked if _is_pow2(g)]
        others = sorted((g for g in picked if not _is_pow2(g)), reverse=True)
        picked = (
            (pow2 + others)[: rule.max_candidates]
            if len(pow2) < rule.max_candidates
            else pow2[-rule.max_candidates :]
        )
    return tuple(sorted(picked))


def divisor_groups(width: int, groups: Iterable[int] = PAPER_GROUPS, layer: str = "") -> tuple[int, ...]:
    """The sizes among ``groups`` that divide ``width`` (ascending); a :class:`QditError` if none does."""
    groups = sorted({int(g) for g in groups})
    legal = tuple(g for g in groups if g >= 1 and divides(g, width))
    if not legal:
        where = f" of {layer}" if layer else ""
        raise QditError(f"none of the group sizes {groups} divides the input width {width}{where}")
    return legal


def parse_int_list(text: str, what: str = "values") -> tuple[int, ...]:
    """``"32,64,128"`` -> ``(32, 64, 128)``; a one-line :class:`QditError` on bad input."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise QditError(f"{what} must be a comma-separated list of integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise QditError(f"{what} must be positive integers, got {text!r}")
    return tuple(sorted(set(values)))


@dataclass(frozen=True)
class LayerInfo:
    """A quantized linear: its qualified name, shape and tokens per sample (for BitOps)."""

    name: str
    in_features: int
    out_features: int
    tokens: int = 1

    @property
    def params(self) -> int:
        return self.in_features * self.out_features


@dataclass(frozen=True)
class Gene:
    layer: str
    kind: str
    choices: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.kind not in GENE_KINDS:
            raise QditError(f"unknown gene kind {self.kind!r}; known: {', '.join(GENE_KINDS)}")
        if not self.choices or list(self.choices) != sorted(set(self.choices)):
            raise QditError(f"gene {self.layer}/{self.kind}: choices must be distinct and ascending")


@dataclass(frozen=True)
class LayerSetting:
    """What a genome says about one layer."""

    w_group: int
    a_group: int
    w_bits: int
    a_bits: int


@dataclass
class SearchSpace:
    """The genes of a search over ``layers``: group sizes, optionally separate act groups and bits.

    A layer's group choices: ``group_choices[name]`` if given, else ``rule``'s width-derived
    candidates if a rule is given, else the paper's :data:`PAPER_GROUPS` that divide its width.
    """

    layers: tuple[LayerInfo, ...]
    w_bits: int = 4
    a_bits: int = 8
    group_choices: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    separate_act: bool = False
    bits_choices: tuple[int, ...] = ()
    rule: CandidateRule | None = None
    genes: tuple[Gene, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.layers = tuple(self.layers)
        if not self.layers:
            raise QditError("the search space has no layers to quantize")
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise QditError("layer names in the search space must be unique")
        check_bits(self.w_bits, "w_bits", QditError)
        check_bits(self.a_bits, "a_bits", QditError)
        for b in self.bits_choices:
            check_bits(b, "every bits choice", QditError)
        genes: list[Gene] = []
        for layer in self.layers:
            choices = tuple(
                self.group_choices.get(layer.name)
                or (
                    candidate_groups(layer.in_features, self.rule)
                    if self.rule is not None
                    else divisor_groups(layer.in_features, PAPER_GROUPS, layer.name)
                )
            )
            for g in choices:
                if g < 1:
                    raise QditError(f"layer {layer.name}: group size {g} must be >= 1")
                check_divides(g, layer.in_features, "group size", layer.name, QditError)
            if self.separate_act:
                genes += [Gene(layer.name, "w_group", choices), Gene(layer.name, "a_group", choices)]
            else:
                genes.append(Gene(layer.name, "group", choices))
            if self.bits_choices:
                genes.append(Gene(layer.name, "w_bits", tuple(sorted(set(self.bits_choices)))))
        self.genes = tuple(genes)
        pos = {layer.name: i for i, layer in enumerate(self.layers)}
        n = len(self.layers)
        self._wg = np.full(n, -1)
        self._ag = np.full(n, -1)
        self._wb = np.full(n, -1)
        for k, gene in enumerate(self.genes):
            i = pos[gene.layer]
            if gene.kind in ("group", "w_group"):
                self._wg[i] = k
            if gene.kind in ("group", "a_group"):
                self._ag[i] = k
            if gene.kind == "w_bits":
                self._wb[i] = k
        self.params = np.array([layer.params for layer in self.layers], dtype=np.float64)

    # --- genomes -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.genes)

    def validate(self, genome: Sequence[int]) -> Genome:
        genome = tuple(int(v) for v in genome)
        if len(genome) != len(self.genes):
            raise QditError(f"genome has {len(genome)} genes, the space has {len(self.genes)}")
        for gene, v in zip(self.genes, genome):
            if v not in gene.choices:
                raise QditError(f"{gene.layer}/{gene.kind} = {v} is not one of {list(gene.choices)}")
        return genome

    def random(self, rng: np.random.Generator) -> Genome:
        return tuple(int(g.choices[rng.integers(len(g.choices))]) for g in self.genes)

    def uniform(self, group: int) -> Genome:
        """Every layer at ``group`` (the nearest legal choice where it is not one; ties go coarser)."""
        out = []
        for g in self.genes:
            if g.kind == "w_bits":
                out.append(self.w_bits if self.w_bits in g.choices else g.choices[-1])
            else:
                out.append(min(g.choices, key=lambda c: (abs(np.log2(c / group)), -c)))
        return tuple(out)

    def all_groups(self) -> tuple[int, ...]:
        return tuple(sorted({c for g in self.genes if g.kind != "w_bits" for c in g.choices}))

    def arrays(self, genome: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-layer weight groups, activation groups and weight bits of ``genome`` (layer order)."""
        g = np.asarray(genome, dtype=np.int64)
        wb = np.where(self._wb >= 0, g[np.maximum(self._wb, 0)], self.w_bits)
        return g[self._wg], g[self._ag], wb

    def settings(self, genome: Sequence[int]) -> dict[str, LayerSetting]:
        """Per-layer weight group, activation group and bits for ``genome``."""
        per: dict[str, dict[str, int]] = {layer.name: {} for layer in self.layers}
        for gene, v in zip(self.genes, genome):
            per[gene.layer][gene.kind] = int(v)
        out = {}
        for name, d in per.items():
            wg = d.get("group", d.get("w_group"))
            ag = d.get("group", d.get("a_group"))
            out[name] = LayerSetting(
                w_group=wg, a_group=ag, w_bits=d.get("w_bits", self.w_bits), a_bits=self.a_bits
            )
        return out

    def describe(self) -> dict:
        return {
            "w_bits": self.w_bits,
            "a_bits": self.a_bits,
            "separate_act": self.separate_act,
            "bits_choices": list(self.bits_choices),
            "genes": [{"layer": g.layer, "kind": g.kind, "choices": list(g.choices)} for g in self.genes],
        }


def genome_key(genome: Iterable[int]) -> str:
    """The cache key of a genome: its values joined by commas."""
    return ",".join(str(int(v)) for v in genome)


def key_genome(key: str) -> Genome:
    return tuple(int(v) for v in key.split(",")) if key else ()


def build_space(
    layers: Sequence[LayerInfo],
    w_bits: int,
    a_bits: int,
    choices: Sequence[int] | None = None,
    rule: CandidateRule | None = None,
    separate_act: bool = False,
    bits_choices: Sequence[int] = (),
    layer_choices: Mapping[str, Sequence[int]] | None = None,
) -> SearchSpace:
    """The search space over ``layers``: per layer, ``layer_choices[name]`` if given, else the
    divisors of its width among ``choices`` (default: the paper's ``{32, 64, 128, 192, 288}``), or
    the width-derived candidates of ``rule`` when a rule is given instead of choices."""
    if choices and rule is not None:
        raise QditError("give either group-size choices or a candidate rule, not both")
    layer_choices = dict(layer_choices or {})
    unknown = sorted(set(layer_choices) - {layer.name for layer in layers})
    if unknown:
        raise QditError(f"per-layer group choices name a layer that is not searched: {unknown[0]}")
    group_choices = {}
    for layer in layers:
        if layer.name in layer_choices:  # exactly these: SearchSpace checks that each divides the width
            legal = tuple(sorted(set(layer_choices[layer.name])))
        elif rule is not None:
            legal = candidate_groups(layer.in_features, rule)
        else:
            legal = divisor_groups(layer.in_features, choices or PAPER_GROUPS, layer.name)
        group_choices[layer.name] = legal
    return SearchSpace(  # which checks the bits
        tuple(layers), w_bits, a_bits, group_choices, separate_act, tuple(sorted(set(bits_choices)))
    )
