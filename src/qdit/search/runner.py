"""The full (paper) search: the authors' evolution with the sample-based fitness, driven in rounds over
ranks, its bookkeeping in a :class:`~qdit.search.session.SearchSession` (state file, resume, log)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qdit.diffusion.distributed import DistContext, evaluate_in_rounds
from qdit.errors import QditError
from qdit.search.cost import Budget, CostModel, baseline_group
from qdit.search.evolution import ALGORITHM, EvolutionConfig, EvolutionSearch, EvolutionStrategy
from qdit.search.objective import Evaluation, Objective
from qdit.search.session import SearchLog, SearchResult, SearchSession, fingerprint
from qdit.search.space import Genome, SearchSpace, genome_key
from qdit.search.strategy import Ask, Value, drive

__all__ = ["SearchResult", "run_full"]


def run_full(
    space: SearchSpace,
    cost: CostModel,
    budget: Budget,
    objective: Objective,
    num_samples: int,
    config: EvolutionConfig | None = None,
    seed: int = 0,
    state_path: str | Path | None = None,
    resume: bool = False,
    dist: DistContext | None = None,
    progress: bool = False,
    on_evaluation: Callable[[SearchLog], None] | None = None,
) -> SearchResult:
    """The paper's search: the authors' evolution (:class:`EvolutionSearch`: 50 + 10 x 50 = 550
    evaluations at the defaults) with the sample-based fitness of ``num_samples`` images."""
    config = config or EvolutionConfig()
    dist = dist or DistContext.current()
    if num_samples < 1:
        raise QditError(f"the number of samples must be >= 1, got {num_samples}")
    g0 = baseline_group(space, cost, budget)
    base = space.uniform(g0)
    search = EvolutionSearch(space, cost, budget, config, seed, seeds=[base])
    fp = fingerprint(
        "full",
        space,
        cost,
        budget,
        objective,
        seed,
        {"evolution": config.to_dict(), "num_samples": num_samples},
    )

    def check_saved(saved: dict) -> None:
        evo_state = (saved.get("extra") or {}).get("evolution") or {}
        if saved.get("method") == "full" and evo_state.get("algorithm") != ALGORITHM:
            raise QditError(
                f"the search state {state_path} was written by an earlier version of the full search (before it "
                "followed the authors' algorithm); start afresh without --resume"
            )

    # the feature store holds only the objective's reference features: candidates keep none
    session = SearchSession("full", fp, objective, state_path, resume, dist, on_evaluation, check_saved)
    if session.resumed:
        search.load_state_dict(session.log.extra["evolution"])
    session.progress(
        progress, config.evaluations, "search (full)", done=len(search.results),
        best=search.best[1] if search.best else None,
    )  # fmt: skip

    def evaluate(genome: Genome) -> Evaluation:
        ev = objective.fitness(genome, num_samples)
        ev.features = None  # not needed again: every candidate has all its samples at once
        return ev

    def measure(ask: Ask) -> dict[str, Value]:  # one round: a candidate per rank
        values: dict[str, Value] = {}

        def on_result(genome: Genome, ev: Evaluation) -> None:
            session.record(ask.stage, ask.kind, genome, ask.n, ev)
            values[genome_key(genome)] = ev.value

        evaluate_in_rounds(list(ask.genomes), evaluate, on_result, dist)
        return values

    def on_tell(genome: Genome, fitness: float) -> None:  # the state after every evaluation, for --resume
        best = search.best
        session.commit(
            1, best=best[1] if best else None, extra={"evolution": search.state_dict()}, gen=search.generation
        )

    try:
        drive(EvolutionStrategy(search, num_samples, batch=dist.world_size, on_tell=on_tell), measure)
    finally:
        session.close()
    session.save({"evolution": search.state_dict()})
    best = search.best
    assert best is not None
    return session.result(
        space, best, g0, base, search.fitness(base), budget, len(search.results), 0, num_samples,
        {"algorithm": ALGORITHM, "populations": [dict(s) for s in search.stats]},
    )  # fmt: skip
