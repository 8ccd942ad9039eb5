"""The paper's evolutionary search as a resumable ask/tell loop (lower fitness is better).

:class:`EvolutionSearch` follows the Q-DiT authors' search script (``scripts/evolution.py``, after
Once-for-All's searcher) step for step:

* population 0: the seeds (the uniform baseline) and then random candidates, each gene drawn
  uniformly from its choices, until the population is full;
* then ``generations`` epochs (10: 50 + 10 x 50 = 550 evaluations at the defaults). Each keeps the
  ``top_k`` best candidates seen so far and breeds ``mutations`` children (a parent drawn from the
  top-k, each gene re-drawn with ``mutation_prob``) and then ``crossovers`` children (two parents
  drawn independently from the top-k, so possibly the same one; each gene from either with
  ``crossover_prob``), and fills the rest of the population with random candidates;
* a candidate that breaks the budget or was seen before (evaluated, or already in this population)
  is rejected and drawn again: ``max_tries`` attempts per child wanted (the authors' ``max_iters``
  of ten times the number wanted), after which the random fill takes over; the random fill itself
  has ``random_tries`` attempts per missing candidate, then a :class:`QditError` says that the space
  cannot supply enough legal distinct candidates. So every population is full, no candidate is
  repaired, and every distinct candidate is evaluated once.

All randomness comes from one :class:`numpy.random.Generator` whose state is part of
:meth:`EvolutionSearch.state_dict`, so a search restored from its state continues exactly as the
uninterrupted one would have. :class:`EvolutionStrategy` puts it behind the
:class:`~qdit.search.strategy.Strategy` protocol, so :func:`~qdit.search.strategy.drive` runs it like the
cheap search's strategies. :class:`RepairingEvolution` is the earlier variant (over-budget
children repaired by random coarsening, duplicates dropped, ``generations`` counting population 0),
kept for the cheap search's evolutions on functions that cost nothing to evaluate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from qdit.errors import QditError
from qdit.search.cost import Budget, CostModel, check_feasible, repair
from qdit.search.space import Genome, SearchSpace, genome_key, key_genome
from qdit.search.strategy import Ask, Value

ALGORITHM = "authors-v2"  # the state's marker: states of the earlier full search lack it


@dataclass(frozen=True)
class EvolutionConfig:
    population: int = 50
    top_k: int = 10
    generations: int = 10  # epochs after population 0
    crossovers: int | None = None  # default: half the population
    mutations: int | None = None  # default: the other half
    crossover_prob: float = 0.5
    mutation_prob: float = 0.1
    max_tries: int = 10  # attempts per mutation / crossover child wanted
    random_tries: int = 1000  # attempts per random candidate wanted, before giving up

    def __post_init__(self) -> None:
        if self.population < 1 or self.top_k < 1 or self.generations < 1:
            raise QditError("population, top-k and generations must be >= 1")
        if not 0 <= self.crossover_prob <= 1 or not 0 <= self.mutation_prob <= 1:
            raise QditError("crossover and mutation probabilities must be in [0, 1]")
        if min(self.num_crossovers, self.num_mutations) < 0:
            raise QditError("the numbers of crossovers and mutations must be >= 0")
        if self.num_crossovers + self.num_mutations < 1:
            raise QditError("a generation needs at least one crossover or mutation")
        if self.num_crossovers + self.num_mutations > self.population:
            raise QditError(
                f"{self.num_crossovers} crossovers + {self.num_mutations} mutations exceed the population "
                f"of {self.population}"
            )
        if self.max_tries < 1 or self.random_tries < 1:
            raise QditError("max_tries and random_tries must be >= 1")

    @property
    def num_crossovers(self) -> int:
        return self.crossovers if self.crossovers is not None else self.population // 2

    @property
    def num_mutations(self) -> int:
        return self.mutations if self.mutations is not None else self.population - self.population // 2

    @property
    def evaluations(self) -> int:
        """Candidates :class:`EvolutionSearch` evaluates: population 0 and one population per epoch."""
        return self.population * (self.generations + 1)

    def to_dict(self) -> dict:
        return asdict(self)


def _encode(f: float) -> float | None:
    return float(f) if math.isfinite(f) else None


def _decode(f: float | None) -> float:
    return math.inf if f is None else float(f)


class EvolutionSearch:
    """Ask for candidates, tell their fitness; :attr:`done` when every population is evaluated."""

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
        """``seeds``: genomes put first into population 0 (e.g. the uniform baseline)."""
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
        # per population: children of each kind and candidates rejected (over budget, seen before)
        self.stats: list[dict[str, int]] = []
        self.population = self._initial([space.validate(s) for s in seeds])

    # --- ask / tell ----------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.generation > self.config.generations

    def ask(self) -> list[Genome]:
        """The candidates of the current population that have no fitness yet (in a fixed order)."""
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

    def _fill(
        self, make: Callable[[], Genome], wanted: int, attempts: int, taken: set[str], stats: dict[str, int]
    ) -> list[str]:
        """Up to ``wanted`` new legal candidates from ``make()`` in at most ``attempts`` draws (the
        authors' loop: a draw over the budget or seen before is rejected and drawn again)."""
        out: list[str] = []
        while len(out) < wanted and attempts > 0:
            attempts -= 1
            child = make()
            key = genome_key(child)
            if not self._legal(child):
                stats["rejected_budget"] += 1
            elif key in taken:
                stats["rejected_duplicate"] += 1
            else:
                taken.add(key)
                out.append(key)
        return out

    def _random_fill(self, pop: list[str], taken: set[str], stats: dict[str, int]) -> None:
        missing = self.config.population - len(pop)
        if missing <= 0:
            return
        got = self._fill(
            lambda: self.space.random(self.rng), missing, missing * self.config.random_tries, taken, stats
        )
        stats["random"] = len(got)
        pop += got
        if len(pop) < self.config.population:
            raise QditError(
                f"the search space cannot supply {self.config.population} distinct candidates that meet the "
                f"budget {self.budget.describe()} for generation {self.generation} ({len(taken)} seen, "
                f"{stats['rejected_budget']} draws over the budget, {stats['rejected_duplicate']} seen "
                "before): give more group sizes (--choices), a looser budget or a smaller population"
            )

    def _new_stats(self) -> dict[str, int]:
        return {
            "generation": self.generation,
            "seeds": 0,
            "mutation": 0,
            "crossover": 0,
            "random": 0,
            "rejected_budget": 0,
            "rejected_duplicate": 0,
        }

    def _initial(self, seeds: list[Genome]) -> list[str]:
        stats = self._new_stats()
        pop: list[str] = []
        for s in seeds:
            if not self._legal(s):
                raise QditError(
                    f"the seed genome {genome_key(s)} does not meet the budget {self.budget.describe()}"
                )
            if genome_key(s) not in pop and len(pop) < self.config.population:
                pop.append(genome_key(s))
        stats["seeds"] = len(pop)
        self._random_fill(pop, set(pop), stats)
        self.stats.append(stats)
        return pop

    def _mutate(self, parent: Genome) -> Genome:
        out = list(parent)
        for i, gene in enumerate(self.space.genes):
            if self.rng.random() < self.config.mutation_prob:
                out[i] = int(gene.choices[self.rng.integers(len(gene.choices))])
        return tuple(out)

    def _crossover(self, a: Genome, b: Genome) -> Genome:
        pick = self.rng.random(len(a)) < self.config.crossover_prob
        return tuple(int(x) if p else int(y) for p, x, y in zip(pick, a, b))

    def _update_top(self) -> None:
        cands = list(dict.fromkeys(self.top + self.population))
        cands.sort(key=lambda k: (self.results[k], self._rank[k]))
        self.top = cands[: self.config.top_k]

    def _advance(self) -> None:
        self._update_top()
        self.generation += 1
        if self.done:
            self.population = []
            return
        c = self.config
        parents = [key_genome(k) for k in self.top]
        taken = set(self.results)
        stats = self._new_stats()

        def parent() -> Genome:
            return parents[int(self.rng.integers(len(parents)))]

        pop = self._fill(
            lambda: self._mutate(parent()), c.num_mutations, c.num_mutations * c.max_tries, taken, stats
        )
        stats["mutation"] = len(pop)
        crossed = self._fill(
            lambda: self._crossover(parent(), parent()),
            c.num_crossovers,
            c.num_crossovers * c.max_tries,
            taken,
            stats,
        )
        stats["crossover"] = len(crossed)
        pop += crossed
        self._random_fill(pop, taken, stats)
        self.stats.append(stats)
        self.population = pop

    # --- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "kind": self.kind,
            "algorithm": ALGORITHM,
            "seed": self.seed,
            "config": self.config.to_dict(),
            "budget": self.budget.to_dict(),
            "space": self.space.describe(),
            "rng": self.rng.bit_generator.state,
            "generation": self.generation,
            "population": list(self.population),
            "top": list(self.top),
            "stats": [dict(s) for s in self.stats],
            "results": {k: _encode(self.results[k]) for k in self.order},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state saved by :meth:`state_dict` of a search over the same space and settings."""
        if state.get("algorithm") != ALGORITHM:
            raise QditError(
                "the saved search state was written by an earlier version of the evolutionary search "
                "(before it followed the authors' algorithm); start afresh without --resume"
            )
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
        self.stats = [dict(s) for s in state.get("stats", [])]
        self.results = {k: _decode(v) for k, v in state["results"].items()}
        self.order = list(state["results"])
        self._rank = {k: i for i, k in enumerate(self.order)}


class EvolutionStrategy:
    """An :class:`EvolutionSearch` as a :class:`~qdit.search.strategy.Strategy`: each ask is the fitness
    with ``n`` samples of the current population's next unevaluated candidates (at most ``batch`` of them,
    0 = all; the full search asks for one round over its ranks, so the state can be saved after every
    round), each tell is the search's, followed by ``on_tell(genome, value)``. The search decides alone:
    driving it this way asks for the same candidates in the same order as its own :meth:`~EvolutionSearch.ask`."""

    def __init__(
        self,
        search: EvolutionSearch,
        n: int,
        batch: int = 0,
        on_tell: Callable[[Genome, float], None] | None = None,
    ) -> None:
        self.search, self.n, self.batch, self.on_tell = search, n, batch, on_tell

    @property
    def done(self) -> bool:
        return self.search.done

    def ask(self) -> Ask:
        pending = self.search.ask()
        if self.batch > 0:
            pending = pending[: self.batch]
        return Ask(f"generation {self.search.generation}", "fit", tuple(pending), self.n)

    def tell(self, genome: Genome, value: Value) -> None:
        fitness = float(value)  # type: ignore[arg-type]  # a fitness, never a Sensitivity
        self.search.tell(genome, fitness)
        if self.on_tell is not None:
            self.on_tell(genome, fitness)


class RepairingEvolution(EvolutionSearch):
    """The earlier variant, for the cheap search's evolutions on functions that cost nothing to
    evaluate: ``generations`` populations in all (population 0 included); a child over the budget
    after ``max_tries`` draws is repaired by random coarsening; a child still seen before is dropped
    (a population may be smaller than asked for); a generation whose children were all seen before
    is skipped."""

    kind = "repairing-evolution"

    @property
    def done(self) -> bool:
        return self.generation >= self.config.generations

    def _draw(self, make: Callable[[], Genome], taken: set[str]) -> Genome:
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

    def _advance(self) -> None:
        self._update_top()
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
