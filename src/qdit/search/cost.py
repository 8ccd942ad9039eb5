"""Cost model (bits per weight including scales, BitOps, mean group size) and the search budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qdit.errors import QditError
from qdit.search.space import Genome, SearchSpace

BUDGET_KINDS = ("mean_group", "bpw", "bitops")


@dataclass(frozen=True)
class CostModel:
    """Storage and compute cost of a genome.

    Bits per weight of a layer: ``w_bits + (scale_bits + zero_bits) / w_group``, one fp16 scale and,
    for asymmetric quantization, one ``w_bits`` zero point per (row, group). BitOps per sample:
    the integer MACs ``tokens * out * in * w_bits * a_bits`` plus one ``rescale_bits``-wide
    multiply-add per (token, output, weight-or-activation group) to rescale the group partial sums.
    """

    scale_bits: int = 16
    symmetric: bool = False
    rescale_bits: int = 16

    def bpw(self, space: SearchSpace, genome: Sequence[int]) -> float:
        wg, _, wb = space.arrays(genome)
        zero = 0 if self.symmetric else wb
        per_layer = wb + (self.scale_bits + zero) / wg
        return float((space.params * per_layer).sum() / space.params.sum())

    def mean_group(self, space: SearchSpace, genome: Sequence[int]) -> float:
        """The paper's budget quantity: the plain mean of the layers' weight group sizes."""
        wg, _, _ = space.arrays(genome)
        return float(wg.mean())

    def bitops(self, space: SearchSpace, genome: Sequence[int]) -> float:
        wg, ag, wb = space.arrays(genome)
        total = 0.0
        for layer, w, a, b in zip(space.layers, wg, ag, wb):
            macs = layer.tokens * layer.out_features * layer.in_features
            groups = layer.in_features / min(w, a)
            total += (
                macs * b * space.a_bits + layer.tokens * layer.out_features * groups * self.rescale_bits**2
            )
        return float(total)

    def size_bytes(self, space: SearchSpace, genome: Sequence[int]) -> float:
        """Quantized weight storage of the searched layers (weights + scales + zero points)."""
        total = sum(layer.params for layer in space.layers)
        return self.bpw(space, genome) * total / 8

    def report(self, space: SearchSpace, genome: Sequence[int]) -> dict[str, float]:
        return {
            "bpw": self.bpw(space, genome),
            "mean_group": self.mean_group(space, genome),
            "bitops": self.bitops(space, genome),
            "size_bytes": self.size_bytes(space, genome),
        }


@dataclass(frozen=True)
class Budget:
    """A cost limit: ``mean_group >= value`` (the paper's) or ``bpw <= value`` or ``bitops <= value``."""

    kind: str = "mean_group"
    value: float = 128.0

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise QditError(f"unknown budget kind {self.kind!r}; known: {', '.join(BUDGET_KINDS)}")
        if not np.isfinite(self.value) or self.value <= 0:
            raise QditError(f"budget value must be a positive number, got {self.value}")

    def measure(self, cost: CostModel, space: SearchSpace, genome: Sequence[int]) -> float:
        if self.kind == "mean_group":
            return cost.mean_group(space, genome)
        if self.kind == "bpw":
            return cost.bpw(space, genome)
        return cost.bitops(space, genome)

    def meets(self, cost: CostModel, space: SearchSpace, genome: Sequence[int]) -> bool:
        m = self.measure(cost, space, genome)
        eps = 1e-9 * max(1.0, abs(self.value))
        return m >= self.value - eps if self.kind == "mean_group" else m <= self.value + eps

    def describe(self) -> str:
        op = ">=" if self.kind == "mean_group" else "<="
        return f"{self.kind} {op} {self.value:g}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value}

    @classmethod
    def from_dict(cls, d: dict) -> Budget:
        return cls(kind=str(d["kind"]), value=float(d["value"]))


def _cheaper_moves(space: SearchSpace, genome: Genome, budget: Budget) -> list[tuple[int, int]]:
    """(gene index, new value) steps that lower the budgeted cost: coarser groups or fewer bits."""
    moves = []
    for i, (gene, v) in enumerate(zip(space.genes, genome)):
        idx = gene.choices.index(v)
        if gene.kind == "w_bits":
            if budget.kind != "mean_group" and idx > 0:
                moves.append((i, gene.choices[idx - 1]))
        elif gene.kind == "a_group" and budget.kind != "bitops":
            continue  # the activation group does not change the weight storage
        elif idx + 1 < len(gene.choices):
            moves.append((i, gene.choices[idx + 1]))
    return moves


def cheapest(space: SearchSpace) -> Genome:
    """The genome with the coarsest groups and the fewest bits (the lowest cost there is)."""
    return tuple(g.choices[0] if g.kind == "w_bits" else g.choices[-1] for g in space.genes)


def check_feasible(space: SearchSpace, cost: CostModel, budget: Budget) -> None:
    if not budget.meets(cost, space, cheapest(space)):
        best = budget.measure(cost, space, cheapest(space))
        raise QditError(
            f"no candidate can meet the budget {budget.describe()}: the cheapest one has {budget.kind} {best:g}"
        )


def only_candidate(space: SearchSpace, cost: CostModel, budget: Budget) -> bool:
    """Whether the cheapest genome is the only one that meets ``budget`` (nothing to search): every
    cost is monotone in each gene, so it is when no single gene one step finer still meets it."""
    low = cheapest(space)
    for i, gene in enumerate(space.genes):
        idx = gene.choices.index(low[i])
        finer = idx + 1 if gene.kind == "w_bits" else idx - 1
        if 0 <= finer < len(gene.choices):
            g = list(low)
            g[i] = gene.choices[finer]
            if budget.meets(cost, space, g):
                return False
    return True


def repair(
    space: SearchSpace, cost: CostModel, budget: Budget, genome: Sequence[int], rng: np.random.Generator
) -> Genome:
    """Make ``genome`` meet ``budget`` by random cheaper steps (one gene one choice coarser at a time)."""
    g = list(space.validate(genome))
    while not budget.meets(cost, space, g):
        moves = _cheaper_moves(space, tuple(g), budget)
        if not moves:
            raise QditError(f"cannot repair a genome to meet the budget {budget.describe()}")
        i, v = moves[int(rng.integers(len(moves)))]
        g[i] = v
    return tuple(g)


def baseline_group(space: SearchSpace, cost: CostModel, budget: Budget) -> int:
    """The finest uniform group size that meets the budget (the uniform baseline)."""
    for g in space.all_groups():
        if budget.meets(cost, space, space.uniform(g)):
            return g
    raise QditError(f"no uniform group size meets the budget {budget.describe()}")


def default_budget(space: SearchSpace, cost: CostModel, group: float = 128.0) -> Budget:
    """The paper's budget, mean group size >= 128, lowered to the coarsest uniform group every layer
    has when the model is too narrow for 128."""
    common = min(max(g.choices) for g in space.genes if g.kind != "w_bits")
    return Budget("mean_group", float(min(group, common)))
