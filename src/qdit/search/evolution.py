"""The paper's evolutionary search as a resumable ask/tell loop (lower fitness is better).

Generation 0 is the uniform baseline plus random candidates that meet the budget. Each later
generation keeps the ``top_k`` best candidates seen so far and breeds ``crossovers`` children
(uniform crossover, each gene from either parent with ``crossover_prob``) and ``mutations``
children (each gene re-drawn with ``mutation_prob``) from them. A child that breaks the budget is
drawn again (up to ``max_tries`` times) and then repaired; a child already seen is drawn again too.
Every distinct candidate is evaluated once: results are cached by genome.

All randomness comes from one :class:`numpy.random.Generator` whose state is part of
:meth:`EvolutionSearch.state_dict`, so a search restored from its state continues exactly as the
uninterrupted one would have.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from qdit.errors import QditError
from qdit.search.cost import Budget, CostModel, check_feasible, repair
from qdit.search.space import Genome, SearchSpace, genome_key, key_genome


@dataclass(frozen=True)
class EvolutionConfig:
    population: int = 50
    top_k: int = 10
    generations: int = 10
    crossovers: int | None = None  # default: half the population
    mutations: int | None = None  # default: the other half
    crossover_prob: float = 0.5
    mutation_prob: float = 0.1
    max_tries: int = 50

    def __post_init__(self) -> None:
        if self.population < 1 or self.top_k < 1 or self.generations < 1:
            raise QditError("population, top-k and generations must be >= 1")
        if not 0 <= self.crossover_prob <= 1 or not 0 <= self.mutation_prob <= 1:
            raise QditError("crossover and mutation probabilities must be in [0, 1]")
        if self.num_crossovers + self.num_mutations < 1:
            raise QditError("a generation needs at least one crossover or mutation")

    @property
    def num_crossovers(self) -> int:
        return self.crossovers if self.crossovers is not None else self.population // 2

    @property
    def num_mutations(self) -> int:
        return self.mutations if self.mutations is not None else self.population - self.population // 2

    def to_dict(self) -> dict:
        return asdict(self)


def _encode(f: float) -> float | None:
    return float(f) if math.isfinite(f) else None


def _decode(f: float | None) -> float:
    return math.inf if f is None else float(f)


class EvolutionSearch:
    """Ask for candidates, tell their fitness; :attr:`done` when all generations are evaluated."""

    kind = "evolution"

    def __init__(
        self,
        space: SearchSpace,
        cost: CostModel,
        budget: Budget,
        config: EvolutionConfig | None = None,
        seed: int = 0,
        seeds: Sequence[Sequence[int]] = (),
    ) -> None:
        """``seeds``: genomes put first into the initial population (e.g. the uniform baseline)."""
        self.space, self.cost, self.budget = space, cost, budget
        self.config = config or EvolutionConfig()
        self.seed = seed
        check_feasible(space, cost, budget)
        self.rng = np.random.default_rng(seed)
        self.generation = 0
        self.results: dict[str, float] = {}  # genome key -> fitness, every candidate evaluated
        self.order: list[str] = []  # keys in the order they were told
        self._rank: dict[str, int] = {}
        self.top: list[str] = []
        self.population = self._initial([space.validate(s) for s in seeds])

    # --- ask / tell ----------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.generation >= self.config.generations

    def ask(self) -> list[Genome]:
        """The candidates of the current generation that have no fitness yet (in a fixed order)."""
        if self.done:
            return []
        return [key_genome(k) for k in self.population if k not in self.results]

    def tell(self, genome: Sequence[int], fitness: float) -> None:
        key = genome_key(genome)
        if key not in self.population:
            raise QditError(f"candidate {key} is not in generation {self.generation}")
        if key in self.results:
            raise QditError(f"candidate {key} was already evaluated")
        self.results[key] = float(fitness) if math.isfinite(fitness) else math.inf
        self._rank[key] = len(self.order)
        self.order.append(key)
        if all(k in self.results for k in self.population):
            self._advance()

    def fitness(self, genome: Sequence[int]) -> float | None:
        return self.results.get(genome_key(genome))

    @property
    def best(self) -> tuple[Genome, float] | None:
        if not self.results:
            return None
        key = min(self.results, key=lambda k: (self.results[k], self._rank[k]))
        return key_genome(key), self.results[key]

    # --- breeding ------------------------------------------------------------------------------
    def _legal(self, genome: Genome) -> bool:
        return self.budget.meets(self.cost, self.space, genome)

    def _draw(self, make, taken: set[str]) -> Genome:
        """A child from ``make()`` that meets the budget and is new, if ``max_tries`` allow."""
        child = make()
        for _ in range(self.config.max_tries):
            if self._legal(child) and genome_key(child) not in taken:
                return child
            child = make()
        if not self._legal(child):
            child = repair(self.space, self.cost, self.budget, child, self.rng)
        return child

    def _initial(self, seeds: list[Genome]) -> list[str]:
        pop: list[str] = []
        for s in seeds:
            s = s if self._legal(s) else repair(self.space, self.cost, self.budget, s, self.rng)
            if genome_key(s) not in pop:
                pop.append(genome_key(s))
        misses = 0
        while len(pop) < self.config.population and misses < self.config.max_tries:
            child = self._draw(lambda: self.space.random(self.rng), set(pop))
            if genome_key(child) in pop:  # a repaired duplicate; the space may be (nearly) exhausted
                misses += 1
                continue
            pop.append(genome_key(child))
        return pop[: self.config.population]

    def _mutate(self, parent: Genome) -> Genome:
        out = list(parent)
        for i, gene in enumerate(self.space.genes):
            if self.rng.random() < self.config.mutation_prob:
                out[i] = int(gene.choices[self.rng.integers(len(gene.choices))])
        return tuple(out)

    def _crossover(self, a: Genome, b: Genome) -> Genome:
        pick = self.rng.random(len(a)) < self.config.crossover_prob
        return tuple(int(x) if p else int(y) for p, x, y in zip(pick, a, b))

    def _advance(self) -> None:
        cands = list(dict.fromkeys(self.top + self.population))
        cands.sort(key=lambda k: (self.results[k], self._rank[k]))
        self.top = cands[: self.config.top_k]
        self.generation += 1
        if self.done:
            self.population = []
            return
        parents = [key_genome(k) for k in self.top]
        taken = set(self.results)
        pop: list[str] = []

        def add(child: Genome) -> None:
            key = genome_key(child)
            if key not in pop:
                pop.append(key)
            taken.add(key)

        for _ in range(self.config.num_crossovers):
            if len(parents) >= 2:

                def make() -> Genome:
                    i, j = self.rng.choice(len(parents), size=2, replace=False)
                    return self._crossover(parents[i], parents[j])

            else:

                def make() -> Genome:
                    return self._mutate(parents[0])

            add(self._draw(make, taken))
        for _ in range(self.config.num_mutations):
            add(self._draw(lambda: self._mutate(parents[int(self.rng.integers(len(parents)))]), taken))
        self.population = pop
        if all(k in self.results for k in pop):  # every child was seen before (tiny space): move on
            self._advance()

    # --- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "kind": self.kind,
            "seed": self.seed,
            "config": self.config.to_dict(),
            "budget": self.budget.to_dict(),
            "space": self.space.describe(),
            "rng": self.rng.bit_generator.state,
            "generation": self.generation,
            "population": list(self.population),
            "top": list(self.top),
            "results": {k: _encode(self.results[k]) for k in self.order},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state saved by :meth:`state_dict` of a search over the same space and settings."""
        mine = self.state_dict()
        for field in ("kind", "seed", "config", "budget", "space"):
            if state.get(field) != mine[field]:
                raise QditError(
                    f"the saved search state has a different {field}; start afresh without --resume"
                )
        self.rng.bit_generator.state = state["rng"]
        self.generation = int(state["generation"])
        self.population = list(state["population"])
        self.top = list(state["top"])
        self.results = {k: _decode(v) for k, v in state["results"].items()}
        self.order = list(state["results"])
        self._rank = {k: i for i, k in enumerate(self.order)}
