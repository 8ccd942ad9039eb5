"""A synthetic search objective (no model): the shape of the real one, an answer the searches must find.

Moved here from the library: it is a test double, not something a user searches with.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence

import numpy as np

from qdit.search.gradient import Sensitivity
from qdit.search.objective import Evaluation
from qdit.search.space import Genome, SearchSpace, genome_key


@functools.lru_cache(maxsize=1 << 16)
def _unit_noise(*parts: object) -> float:
    """A deterministic standard-normal number from ``parts``."""
    h = hashlib.sha256(repr(parts).encode()).digest()
    return float(np.random.default_rng(int.from_bytes(h[:8], "little")).standard_normal())


def chain_minimum(
    space: SearchSpace,
    unary: Sequence[dict[int, float]],
    pairs: Sequence[dict[tuple[int, int], float]] | None,
    min_mean_group: float,
) -> tuple[float, Genome]:
    """The exact minimum of ``sum_i unary[i][g_i] + sum_i pairs[i][(g_i, g_i+1)]`` over the genomes of
    ``space`` (group-size genes only) whose plain mean group size is at least ``min_mean_group``, and a
    genome that has it: dynamic programming along the chain of genes, the state being the previous
    gene's choice and the group sizes' total so far (capped at the total the budget needs)."""
    assert all(gene.kind == "group" for gene in space.genes), "one group-size gene per layer only"
    need = int(np.ceil(min_mean_group * len(space.genes) - 1e-9))
    states: dict[tuple[int, int], tuple[float, Genome]] = {}
    for i, gene in enumerate(space.genes):
        prev = states if i else {(0, 0): (0.0, ())}
        states = {}
        for (p, total), (value, genome) in prev.items():
            for c in gene.choices:
                v = value + unary[i][c] + (pairs[i - 1][(p, c)] if pairs and i else 0.0)
                key = (c, min(need, total + c))
                if key not in states or v < states[key][0]:
                    states[key] = (v, (*genome, c))
    feasible = [vg for (_, total), vg in states.items() if total >= need]
    if not feasible:
        raise ValueError(f"no genome has a mean group size >= {min_mean_group}")
    value, genome = min(feasible)
    return float(value), genome


class SyntheticObjective:
    """A toy objective with the shape of the real one, for tests and algorithm benchmarks.

    The hidden cost is a value per (gene, choice) (finer groups are better, with a non-monotonic
    twist like the paper's) plus an interaction per pair of neighbouring genes (``interaction``: its
    scale), so it is not additive; ``instance`` draws another such cost (0: the one the tests have
    always used). Its exact minimum under a mean-group budget is :meth:`optimum`. The fitness is the
    hidden cost plus a per-sample noise whose mean over ``n`` samples shrinks like ``1 / sqrt(n)``,
    mostly shared by all genomes (paired noise) plus a genome-dependent part. The proxy is the
    additive part with a systematic per-gene error. The sensitivity is a first-order estimate, not
    the answer: single-gene changes at the genome where it is taken, with an error per change (see
    :meth:`sensitivity`); read off at the uniform baseline it gets 56-87% of the optimum's gain on
    instances 0-2, which is what the searches are measured against.
    """

    forwards_per_image = 20

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        noise: float = 0.05,
        proxy_error: float = 0.2,
        interaction: float = 0.04,
        sensitivity_error: float = 0.3,
        instance: int = 0,
    ) -> None:
        self.space = space
        self.seed = seed
        self.noise = noise
        self.proxy_error = proxy_error
        self.interaction = interaction
        self.sensitivity_error = sensitivity_error
        self.instance = instance
        rng = np.random.default_rng([1234, instance] if instance else 1234)
        self.table: list[dict[int, float]] = []
        self.proxy_table: list[dict[int, float]] = []
        for gene in space.genes:
            base = rng.uniform(0.2, 1.0)
            row = {c: base * np.log2(c) / 8 + rng.uniform(0, 0.15) for c in gene.choices}
            self.table.append(row)
            self.proxy_table.append(
                {c: v * (1 + proxy_error * rng.standard_normal()) for c, v in row.items()}
            )
        genes = space.genes
        self.pairs: list[dict[tuple[int, int], float]] = [
            {(a, b): interaction * float(rng.standard_normal()) for a in g.choices for b in h.choices}
            for g, h in zip(genes, genes[1:])
        ]
        self.calls: list[tuple[str, str, int]] = []

    def optimum(self, min_mean_group: float) -> tuple[float, Genome]:
        """The exact minimum of the hidden cost over the genomes whose mean group size is at least
        ``min_mean_group``, and a genome that has it."""
        return chain_minimum(self.space, self.table, self.pairs, min_mean_group)

    def true_value(self, genome: Sequence[int]) -> float:
        additive = sum(t[v] for t, v in zip(self.table, genome))
        pairs = sum(p[(a, b)] for p, a, b in zip(self.pairs, genome, genome[1:]))
        return float(additive + pairs)

    def _sample_noise(self, genome: Sequence[int], i: int) -> float:
        """Sample ``i``'s noise: a part shared by every genome and a part that adds up over the genes
        (paired noise: genomes that differ in a few genes have nearly the same samples)."""
        own = sum(_unit_noise(self.seed, i, k, v) for k, v in enumerate(genome)) / np.sqrt(len(genome))
        return _unit_noise(self.seed, i) + 0.3 * own

    def fitness(self, genome: Sequence[int], num_samples: int, known: np.ndarray | None = None) -> Evaluation:
        have = 0 if known is None else len(known)
        new = np.array([[self._sample_noise(genome, i)] for i in range(have, num_samples)]).reshape(-1, 1)
        feats = new if known is None else np.concatenate([known[:num_samples], new])
        self.calls.append(("fitness", genome_key(genome), num_samples))
        value = self.true_value(genome) + self.noise * float(feats[:num_samples, 0].mean())
        n_new = max(0, num_samples - have)
        return Evaluation(
            value, images=n_new, forwards=n_new * self.forwards_per_image, features=feats[:num_samples]
        )

    def fidelity(
        self, genome: Sequence[int], num_samples: int, known: np.ndarray | None = None
    ) -> Evaluation:
        """The hidden cost with less noise and a small systematic difference from the fitness."""
        ev = self.fitness(genome, num_samples, known)
        self.calls[-1] = ("fidelity", genome_key(genome), num_samples)
        shared = self.noise * float(np.mean([_unit_noise(self.seed, i) for i in range(num_samples)]))
        bias = 0.05 * sum(_unit_noise("bias", k, v) for k, v in enumerate(genome)) / np.sqrt(len(genome))
        ev.value = ev.value - shared + bias
        return ev

    has_sensitivity = True

    def sensitivity_forwards(self, num_samples: int) -> int:
        return num_samples * self.forwards_per_image * 6

    def sensitivity(
        self, genome: Sequence[int], num_samples: int, known: np.ndarray | None = None
    ) -> Sensitivity:
        """First-order single-gene changes at ``genome``: each the hidden cost's change when that gene
        alone changes (it sees the genome's current neighbours, as a backward pass sees the current
        model), scaled by ``1 + sensitivity_error * z`` per (gene, choice), so the ranking of a gene's
        choices can be wrong, and off by ``sensitivity_error / 10 * z'``. Summed over several changed
        genes it misses their interactions: read off at one genome it is not the answer."""
        self.calls.append(("sensitivity", genome_key(genome), num_samples))
        key = genome_key(genome)
        err = self.sensitivity_error
        g = tuple(int(v) for v in genome)
        value = self.true_value(g)
        table = tuple(
            {
                c: 0.0
                if c == v
                else (self.true_value(g[:k] + (c,) + g[k + 1 :]) - value)
                * (1 + err * _unit_noise("gain", self.seed, key, k, c))
                + err * 0.1 * _unit_noise("sens", self.seed, key, k, c)
                for c in t
            }
            for k, (t, v) in enumerate(zip(self.table, g))
        )
        return Sensitivity(
            table, Evaluation(value, images=num_samples, forwards=self.sensitivity_forwards(num_samples))
        )

    def proxy(self, genome: Sequence[int]) -> Evaluation:
        self.calls.append(("proxy", genome_key(genome), 0))
        return Evaluation(float(sum(t[v] for t, v in zip(self.proxy_table, genome))), forwards=8)

    def describe(self) -> dict:
        return {
            "objective": "synthetic",
            "seed": self.seed,
            "noise": self.noise,
            "proxy_error": self.proxy_error,
            "interaction": self.interaction,
            "sensitivity_error": self.sensitivity_error,
        }
