"""The cheap search (the default): a tenth of the full search's cost. Two strategies.

**gradient** (the default, where the objective's features can be differentiated): trust-region
rounds around the best genome so far, guided by a first-order sensitivity of the fitness.

1. The uniform baseline is measured with ``N`` samples.
2. At the best genome so far, one forward and backward pass through the sampler over the same ``N``
   samples predicts what every single-gene change would do to the fitness
   (:mod:`qdit.search.gradient`). It is retaken whenever the best genome moves.
3. Each round measures ``candidates`` genomes: the best unmeasured one of the prediction within a
   Hamming distance ``r``, ``r/2``, ``r/4``, ... of the point where it was taken. ``r`` starts at
   the number of genes; it becomes twice the step of a round that improved, and halves after one
   that did not. Once 4 genomes are measured, the prediction is corrected by the measurements: it
   becomes the prior of the additive surrogate below (:mod:`qdit.search.surrogate`), fitted to them.
4. It stops before it would spend more than ``budget_evals * N`` image-equivalents (model forwards
   divided by the forwards of one image). A sensitivity pass counts its ``N`` regenerated images and
   ``3 + alternatives`` forwards per sample-step (forward, backward, and one rerun of the linears per
   alternative choice of the layer with the most); on the embedded model it takes 4.7x the time of a
   64-sample evaluation and is counted as 6x. The best measured genome wins.

On the embedded model (64 samples) it ends exactly where the paper's full search ends: 283.15 at 10
DDIM steps and 276.38 at 20 (the same genomes), with 1,792 images (5.6% and 5.8% of the full
search's) and 3,072 image-equivalents (9.6% and 9.9%), in 3 and 6 minutes (BENCHMARKS.md).

**bayes**: Bayesian optimisation on an additive surrogate, with Thompson sampling, in rounds of a
few candidates (also the strategy whenever the features cannot be differentiated):

1. **Rounds.** ``lofi_rounds`` rounds of ``lofi_batch`` candidates, each measured with the real
   fitness (paired noise: sample ``i`` has the same noise and label for every candidate). Round 0
   is the uniform baseline and random genomes that meet the budget. Every later round fits an
   additive surrogate (one coefficient per layer and choice, Bayesian linear regression, see
   :mod:`qdit.search.surrogate`) to all measurements so far; each of its candidates is the best
   unmeasured genome of a free evolution on one draw from the surrogate's posterior (Thompson
   sampling), seeded with the best measured genomes.
2. **Exploitation.** The ``exploit`` best unmeasured genomes of the surrogate's mean (it averages
   the noise of all measurements) are measured: near-optimal variants of one another.
3. **Finish.** The best measured candidate wins (its value with ``N`` samples), so on the search's
   samples the result is never worse than the uniform baseline.

With the defaults that is 49 evaluations with all samples, a tenth of the paper's 500. Low-fidelity
rounds are available (``lofi_fraction < 1``: the rounds measure ``lofi_fraction * N`` samples, or
the distance to the float model's samples with ``lofi_measure="fidelity"``; the ``shortlist`` best
then go through successive halving up to ``N`` samples, a candidate that goes on only generating its
new samples). On the embedded model they did not pay: per image, the Fréchet distance of the first
32 of 64 samples tells less about the 64-sample fitness than the 64-sample fitness itself (across
236 candidates it follows it with a residual of 2.1, about the size of the differences that
matter near the optimum). **Proxy screening** is available too (``screen``: every single-gene change measured
by the noise-prediction error against the float model on a few float trajectories, no images; its
additive prediction becomes the surrogate's prior and its best candidates the first round's); on the
embedded model its single-gene deltas were within +-3% and not monotone in the group size.

Each strategy is an ask/tell object (:class:`GradientStrategy`, :class:`BayesStrategy`; see
:mod:`qdit.search.strategy`) that :func:`run_cheap` drives, measuring what it asks for with the cache.
Everything measured is cached in the state file by genome (and number of samples). The algorithm is
deterministic given the seed and the measurements, so a resumed run replays it from the cache and
continues with the first measurement that is missing: nothing is measured twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from qdit.diffusion.distributed import DistContext, evaluate_in_rounds
from qdit.errors import QditError
from qdit.search.cost import Budget, CostModel, baseline_group, repair
from qdit.search.evolution import EvolutionConfig, RepairingEvolution
from qdit.search.objective import Evaluation, Objective, Sensitivity
from qdit.search.session import SearchLog, SearchResult, SearchSession, best_full, fingerprint
from qdit.search.space import Genome, SearchSpace, genome_key, key_genome
from qdit.search.strategy import Ask, Steps, StepwiseStrategy, Strategy, Value, drive
from qdit.search.surrogate import AdditiveSurrogate

STRATEGIES = ("gradient", "bayes")


@dataclass(frozen=True)
class CheapConfig:
    # measurement rounds: ``lofi_rounds`` rounds of ``lofi_batch`` candidates, each measured on
    # ``lofi_fraction * N`` samples; the first round is the baseline and random legal genomes (and the
    # proxy pool's best when ``screen``), every later round is chosen on an additive surrogate of all
    # measurements so far
    lofi_batch: int = 4
    lofi_rounds: int = 10
    lofi_fraction: float = 1.0  # samples per candidate, as a fraction of N ...
    lofi_min_samples: int = 16  # ... but at least this many (a Fréchet distance of fewer is mostly noise)
    lofi_num_samples: int | None = None  # or exactly this many
    # the measurement in the rounds: the fitness itself ("fit"), or the distance to the float model's
    # samples ("fidelity")
    lofi_measure: str = "fit"
    # how a round is chosen on the surrogate: a posterior draw optimised per candidate ("thompson"), or
    # the best of the surrogate's mean plus a share ``explore`` of random legal genomes ("greedy")
    acquisition: str = "thompson"
    explore: float = 0.0
    exploit: int = 9  # the final round: the best unmeasured genomes of the surrogate's mean
    shortlist: int = 4  # the best measured, taken to N samples by successive halving
    ridge: float | None = None  # surrogate: noise-to-prior variance ratio (None: chosen by the evidence)
    # proxy screening (no images: noise-prediction error against the float model) as the surrogate's
    # prior and a pool of candidates for the first round; off by default, since on the embedded model
    # its single-gene deltas were within +-3% and not monotone in the group size
    screen: bool = False
    pool: int = 32  # candidates from the additive proxy prediction whose proxy is measured jointly
    proxy_population: int = 64  # the (free) evolutions on the proxy prediction and the surrogate
    proxy_generations: int = 20
    # "gradient" (the default where the objective supports it): rounds around the best genome so
    # far, predicted by a first-order sensitivity taken there (one backward pass through the
    # sampler) and corrected by the measurements; "bayes": the surrogate rounds above
    strategy: str = "gradient"
    candidates: int = 4  # gradient rounds: candidates per round, at halving Hamming radii
    # gradient strategy: everything it does costs at most this many N-sample evaluations'
    # worth of model forwards (48: under a tenth of the paper's 500, also when some of those repeat)
    budget_evals: int = 48
    correct: bool = True  # gradient strategy: correct the sensitivity's prediction by the measurements

    def __post_init__(self) -> None:
        if self.exploit < 0:
            raise QditError(f"exploit must be >= 0, got {self.exploit}")
        if (
            min(
                self.pool,
                self.shortlist,
                self.lofi_batch,
                self.lofi_rounds,
                self.proxy_population,
                self.proxy_generations,
            )
            < 1
        ):
            raise QditError(
                "pool, shortlist, low-fidelity batch and rounds and proxy population and generations must be >= 1"
            )
        if not 0 < self.lofi_fraction <= 1:
            raise QditError(f"the low-fidelity fraction must be in (0, 1], got {self.lofi_fraction}")
        if self.lofi_measure not in ("fidelity", "fit"):
            raise QditError(
                f"the low-fidelity measure must be 'fidelity' or 'fit', got {self.lofi_measure!r}"
            )
        if self.acquisition not in ("thompson", "greedy"):
            raise QditError(f"the acquisition must be 'thompson' or 'greedy', got {self.acquisition!r}")
        if not 0 <= self.explore < 1:
            raise QditError(f"the exploration share must be in [0, 1), got {self.explore}")
        if self.strategy not in STRATEGIES:
            raise QditError(
                f"the cheap strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"
            )
        if self.candidates < 1 or self.budget_evals < 2:
            raise QditError("gradient candidates must be >= 1 and its budget >= 2 evaluations")
        if self.ridge is not None and self.ridge <= 0:
            raise QditError(f"the surrogate's ridge must be > 0, got {self.ridge}")

    def to_dict(self) -> dict:
        return asdict(self)

    def lofi_samples(self, num_samples: int) -> int:
        if self.lofi_num_samples is not None:
            return min(num_samples, max(2, self.lofi_num_samples))
        return min(num_samples, max(2, self.lofi_min_samples, round(num_samples * self.lofi_fraction)))


def rung_samples(start: int, num_samples: int) -> list[int]:
    """Successive-halving sample counts after ``start``: doubling, ending at ``num_samples``."""
    out: list[int] = []
    n = start
    while n < num_samples:
        n = min(num_samples, 2 * n)
        out.append(n)
    return out


def planned_images(num_samples: int, config: CheapConfig, gradient: bool | None = None) -> int:
    """An upper bound on the images the cheap search generates (screening and proxies generate none);
    for the gradient strategy (``gradient``, default: when the config asks for it), on its image-equivalents."""
    if config.strategy == "gradient" if gradient is None else gradient:
        return config.budget_evals * num_samples
    lo = config.lofi_samples(num_samples)
    total = (config.lofi_batch * config.lofi_rounds + config.exploit) * lo
    k, have = config.shortlist, lo
    for n in rung_samples(lo, num_samples):
        total += k * (n - have)
        have = n
        k = max(1, math.ceil(k / 2))
    return total + num_samples - lo  # the baseline (measured in the first round) with all samples


def run_cheap(
    space: SearchSpace,
    cost: CostModel,
    budget: Budget,
    objective: Objective,
    num_samples: int,
    config: CheapConfig | None = None,
    seed: int = 0,
    state_path: str | Path | None = None,
    resume: bool = False,
    dist: DistContext | None = None,
    progress: bool = False,
    on_evaluation: Callable[[SearchLog], None] | None = None,
) -> SearchResult:
    config = config or CheapConfig()
    dist = dist or DistContext.current()
    if num_samples < 1:
        raise QditError(f"the number of samples must be >= 1, got {num_samples}")
    g0 = baseline_group(space, cost, budget)
    base = space.uniform(g0)
    use_gradient = config.strategy == "gradient" and objective.has_sensitivity
    settings: dict = {"cheap": config.to_dict(), "num_samples": num_samples}
    if use_gradient and getattr(objective, "stepwise_backward", False):
        # its sensitivity passes cost one more forward, which the gradient strategy's plan counts
        settings["sensitivity_backward"] = "steps"
    fp = fingerprint("cheap", space, cost, budget, objective, seed, settings)
    session = SearchSession("cheap", fp, objective, state_path, resume, dist, on_evaluation)
    log = session.log
    setup = session.setup_cost
    if not session.resumed and setup is not None:  # e.g. the proxy's full-precision trajectories
        log.record("setup", "setup", base, 0, setup)
    log.extra["strategy"] = "gradient" if use_gradient else "bayes"
    screen_items = [base] + [
        tuple(v if j == i else x for j, x in enumerate(base))
        for i, gene in enumerate(space.genes)
        for v in gene.choices
        if v != base[i]
    ]
    # a resumed run starts the bar where the interrupted one stopped (proxies count 1, samples 1 each)
    setup_images = sum(h["images"] for h in log.history[:1] if h["kind"] == "setup")
    session.progress(
        progress,
        (len(screen_items) + config.pool if config.screen and not use_gradient else 0)
        + planned_images(num_samples, config, use_gradient),
        "search (cheap)",
        unit="img",
        done=sum(h["kind"] == "proxy" for h in log.history) + log.images - setup_images,
    )

    def best_now() -> float | None:
        b = best_full(log, num_samples)
        return b[1] if b else None

    # -- measuring with the cache -----------------------------------------------------------
    def proxies(stage: str, genomes: list[Genome]) -> dict[str, float]:
        todo = [g for g in dict.fromkeys(genomes) if log.lookup("proxy", g) is None]

        def on_result(g: Genome, ev: Evaluation) -> None:
            session.record(stage, "proxy", g, 0, ev)
            session.commit(1, best=best_now(), stage=stage)

        evaluate_in_rounds(todo, objective.proxy, on_result, dist)
        return {genome_key(g): float(log.lookup("proxy", g)) for g in genomes}  # type: ignore[arg-type]

    def fitnesses(stage: str, genomes: list[Genome], n: int, kind: str = "fit") -> dict[str, float]:
        todo = [g for g in dict.fromkeys(genomes) if log.lookup(kind, g, n) is None]
        measure = objective.fitness if kind == "fit" else objective.fidelity

        def evaluate(g: Genome) -> Evaluation:
            return measure(g, n, session.features(g))

        def on_result(g: Genome, ev: Evaluation) -> None:
            session.record(stage, kind, g, n, ev)
            session.commit(int(ev.images), best=best_now(), stage=stage)

        evaluate_in_rounds(todo, evaluate, on_result, dist)
        return {genome_key(g): float(log.lookup(kind, g, n)) for g in genomes}  # type: ignore[arg-type]

    def sensitivity_at(g: Genome) -> Sensitivity:
        tables = log.extra.setdefault("sensitivity", {})
        key = genome_key(g)
        if key not in tables:
            sens = objective.sensitivity(g, num_samples, session.features(g))
            tables[key] = sens.to_list()
            session.record("sensitivity", "sensitivity", g, num_samples, sens.cost)
            session.commit(
                round(sens.cost.forwards / objective.forwards_per_image), best=best_now(), notify=False,
                stage="sensitivity",
            )  # fmt: skip
            return sens
        return Sensitivity.from_list(tables[key])

    def measure(ask: Ask) -> dict[str, Value]:
        if ask.kind == "sensitivity":
            return {genome_key(g): sensitivity_at(g) for g in ask.distinct}
        if ask.kind == "proxy":
            return dict(proxies(ask.stage, list(ask.genomes)))
        return dict(fitnesses(ask.stage, list(ask.genomes), ask.n, ask.kind))

    strategy: Strategy
    if use_gradient:
        sens_images = objective.sensitivity_forwards(num_samples) / objective.forwards_per_image
        strategy = GradientStrategy(space, cost, budget, config, seed, num_samples, sens_images)
    else:
        strategy = BayesStrategy(space, cost, budget, config, seed, num_samples, screen_items)
    try:
        drive(strategy, measure)
        # the baseline with all samples (reported, and the winner is never worse on these samples)
        fitnesses("baseline", [base], num_samples)
    finally:
        session.close()
    session.save()
    winner = best_full(log, num_samples)
    assert winner is not None
    return session.result(
        space, winner, g0, base, log.lookup("fit", base, num_samples), budget,
        evaluations=sum(1 for h in log.history if h["kind"] in ("fit", "fidelity")),
        proxy_evaluations=sum(1 for h in log.history if h["kind"] == "proxy"),
        num_samples=num_samples,
        extra={
            "strategy": log.extra["strategy"],
            "sensitivity_passes": sum(1 for h in log.history if h["kind"] == "sensitivity"),
        },
    )  # fmt: skip


class _CheapStrategy(StepwiseStrategy):
    """What both cheap strategies share: the space, its budget, the config, the seed and the baseline."""

    def __init__(
        self,
        space: SearchSpace,
        cost: CostModel,
        budget: Budget,
        config: CheapConfig,
        seed: int,
        num_samples: int,
    ) -> None:
        super().__init__()
        self.space, self.cost, self.budget, self.config, self.seed = space, cost, budget, config, seed
        self.num_samples = num_samples
        self.base = space.uniform(baseline_group(space, cost, budget))

    def _evolve(
        self, seed: int, seeds: list[Genome], score: Callable[[list[Genome]], Sequence[float]]
    ) -> RepairingEvolution:
        return _free_evolution(self.space, self.cost, self.budget, self.config, seed, seeds, score)


class GradientStrategy(_CheapStrategy):
    """Trust-region rounds around the best genome so far, guided by the first-order sensitivity taken
    there (see the module docstring); everything within ``budget_evals`` N-sample evaluations' worth of
    forwards, a sensitivity pass counted as ``sensitivity_images`` images."""

    def __init__(
        self, space: SearchSpace, cost: CostModel, budget: Budget, config: CheapConfig, seed: int, num_samples: int,
        sensitivity_images: float,
    ) -> None:  # fmt: skip
        super().__init__(space, cost, budget, config, seed, num_samples)
        self.sensitivity_images = sensitivity_images

    def steps(self) -> Steps:
        space, config, seed, n, base = self.space, self.config, self.seed, self.num_samples, self.base
        cap = config.budget_evals * n  # image-equivalents
        sens_eq = self.sensitivity_images
        measured = dict((yield Ask("baseline", "fit", (base,), n)))
        spent = float(n)
        radius = len(space.genes)
        latest: tuple[Genome, Sensitivity] | None = None
        for r in range(10_000):
            p_key = min(measured, key=lambda k: (measured[k], k))
            p = key_genome(p_key)
            k = config.candidates
            new_point = latest is None or latest[0] != p  # (a resumed run finds it cached)
            if new_point and spent + sens_eq + k * n <= cap:  # else: the rest goes to the latest
                spent += sens_eq
                taken_at = yield Ask("sensitivity", "sensitivity", (p,), n)
                latest = (p, taken_at[p_key])
            if latest is None:
                break
            k = min(k, int((cap - spent + 1e-9) // n))
            if k < 1:
                break
            center, sens = latest
            f_center = measured[genome_key(center)]

            def prior(g: Genome, sens: Sensitivity = sens, f_center: float = f_center) -> float:
                return sens.predict(f_center, g)

            if config.correct and len(measured) >= 4:
                keys = list(measured)
                surrogate = AdditiveSurrogate(space, base, prior, config.ridge)
                surrogate.fit([key_genome(x) for x in keys], [measured[x] for x in keys])
                predict: Callable[[Sequence[Genome]], Sequence[float]] = surrogate.predict
            else:
                predict = lambda gs: [prior(g) for g in gs]  # noqa: E731
            taken = set(measured)
            batch: list[Genome] = []
            for j in range(k):
                rad = max(1, round(radius / 2**j))

                def score(
                    gs: list[Genome], rad: int = rad, center: Genome = center, predict: Callable = predict
                ) -> list[float]:
                    return [
                        float(v) + 1e3 * max(0, _hamming(g, center) - rad) for v, g in zip(predict(gs), gs)
                    ]

                evo = self._evolve(seed + 7919 * r + 104_729 * (j + 1), [center], score)
                ranked = sorted(evo.results, key=lambda x: (evo.results[x], x))
                pick = [x for x in ranked if x not in taken and evo.results[x] < 1e3][:1]
                batch += [key_genome(x) for x in pick]
                taken |= set(pick)
            if not batch:
                break
            got = yield Ask(f"round {r}", "fit", tuple(batch), n)
            spent += n * len(batch)
            measured.update(got)
            best_new = min(batch, key=lambda g: (got[genome_key(g)], genome_key(g)))
            if got[genome_key(best_new)] < measured[p_key]:
                radius = min(len(space.genes), max(2, 2 * _hamming(best_new, p)))
            else:
                radius = max(1, radius // 2)


class BayesStrategy(_CheapStrategy):
    """Bayesian optimisation on an additive surrogate in rounds, then exploitation and successive halving
    (see the module docstring); ``screen_items``: the baseline and its single-gene changes, whose proxy
    screening measures when the config asks for it."""

    def __init__(
        self, space: SearchSpace, cost: CostModel, budget: Budget, config: CheapConfig, seed: int, num_samples: int,
        screen_items: Sequence[Genome],
    ) -> None:  # fmt: skip
        super().__init__(space, cost, budget, config, seed, num_samples)
        self.screen_items = list(screen_items)

    def steps(self) -> Steps:
        space, cost, budget, config, seed = self.space, self.cost, self.budget, self.config, self.seed
        num_samples, base, screen_items = self.num_samples, self.base, self.screen_items
        # 1.-2. (optional) screening: single-gene proxy deltas, an additive prediction, and a pool
        # of its best candidates with their proxy measured jointly
        prior: Callable[[Genome], float] | None = None
        pool: list[Genome] = []
        if config.screen:
            measured = yield Ask("screen", "proxy", tuple(screen_items))
            p0 = measured[genome_key(base)]
            delta: list[dict[int, float]] = [{v: 0.0} for v in base]
            for item in screen_items[1:]:
                i = next(j for j, (a, b) in enumerate(zip(item, base)) if a != b)
                delta[i][item[i]] = measured[genome_key(item)] - p0

            def predicted(genome: Genome) -> float:
                return p0 + sum(d[v] for d, v in zip(delta, genome))

            prior = predicted
            evo = self._evolve(seed, [base], lambda gs: [predicted(g) for g in gs])
            ranked = sorted(evo.results, key=lambda k: (evo.results[k], k))
            pool = [key_genome(k) for k in ranked[: config.pool]]
            joint = yield Ask("pool", "proxy", tuple(pool))
            pool.sort(key=lambda g: (joint[genome_key(g)], genome_key(g)))

        # 3. rounds of measurements (paired noise), each round's candidates chosen on an additive
        # surrogate fitted to all measurements so far
        lo = config.lofi_samples(num_samples)
        measured_lo: dict[str, float] = {}
        rng = np.random.default_rng([seed, 17])
        explore = round(config.lofi_batch * config.explore)

        def random_legal(k: int, taken: set[str]) -> list[Genome]:
            out: list[Genome] = []
            for _ in range(50 * max(1, k)):
                if len(out) >= k:
                    break
                g = repair(space, cost, budget, space.random(rng), rng)
                if genome_key(g) not in taken:
                    taken.add(genome_key(g))
                    out.append(g)
            return out

        def top_measured(k: int) -> list[Genome]:
            return [key_genome(x) for x in sorted(measured_lo, key=lambda x: (measured_lo[x], x))[:k]]

        def best_unmeasured(evo: RepairingEvolution, taken: set[str], k: int) -> list[Genome]:
            ranked = sorted(evo.results, key=lambda x: (evo.results[x], x))
            return [key_genome(x) for x in ranked if x not in taken][:k]

        first = list(dict.fromkeys([base] + pool))[: max(1, config.lofi_batch - explore)]
        batch = first + random_legal(config.lofi_batch - len(first), {genome_key(g) for g in first})
        surrogate = AdditiveSurrogate(space, base, prior, config.ridge)
        for r in range(config.lofi_rounds):
            if r > 0:
                keys = list(measured_lo)
                surrogate.fit([key_genome(k) for k in keys], [measured_lo[k] for k in keys])
                taken = set(measured_lo)
                batch = []
                want = config.lofi_batch - explore
                if config.acquisition == "thompson":
                    draws = np.random.default_rng([seed, 29, r])
                    for j in range(want):
                        draw = surrogate.draw(draws)
                        evo = self._evolve(
                            seed + 7919 * r + 104_729 * (j + 1), top_measured(config.lofi_batch), draw
                        )
                        batch += best_unmeasured(evo, taken, 1)
                        taken |= {genome_key(g) for g in batch}
                else:
                    evo = self._evolve(seed + 7919 * r, top_measured(config.lofi_batch), surrogate.predict)
                    batch = best_unmeasured(evo, taken, want)
                    taken |= {genome_key(g) for g in batch}
                batch += random_legal(config.lofi_batch - len(batch), taken)
            if not batch:
                break
            measured_lo.update(
                (yield Ask(f"round {r} ({lo} samples)", config.lofi_measure, tuple(batch), lo))
            )

        # 4. exploitation: the best unmeasured genomes of the surrogate's mean (it averages the noise
        # of all measurements), near-optimal variants of one another
        keys = list(measured_lo)
        surrogate.fit([key_genome(k) for k in keys], [measured_lo[k] for k in keys])
        if config.exploit:
            evo = self._evolve(
                seed + 7919 * config.lofi_rounds, top_measured(config.lofi_batch), surrogate.predict
            )
            batch = best_unmeasured(evo, set(measured_lo), config.exploit)
            measured_lo.update((yield Ask(f"exploit ({lo} samples)", config.lofi_measure, tuple(batch), lo)))
        # 5. the best measured: successive halving up to N samples (nothing to do when lo == N)
        alive = top_measured(config.shortlist)
        for r, n in enumerate(rung_samples(lo, num_samples) or [num_samples]):
            fit = yield Ask(f"rung {r} ({n} samples)", "fit", tuple(alive), n)
            if n == num_samples:
                break
            alive.sort(key=lambda g: (fit[genome_key(g)], genome_key(g)))
            alive = alive[: max(1, math.ceil(len(alive) / 2))]


def _hamming(a: Sequence[int], b: Sequence[int]) -> int:
    return sum(x != y for x, y in zip(a, b))


def _free_evolution(
    space: SearchSpace,
    cost: CostModel,
    budget: Budget,
    config: CheapConfig,
    seed: int,
    seeds: list[Genome],
    score: Callable[[list[Genome]], Sequence[float]],
) -> RepairingEvolution:
    """The (repairing) evolution on a function that costs nothing to evaluate (scored a generation at a time)."""
    evo = RepairingEvolution(
        space, cost, budget,
        EvolutionConfig(population=config.proxy_population, top_k=max(2, config.proxy_population // 5), generations=config.proxy_generations, max_tries=5),
        seed=seed,
        seeds=seeds,
    )  # fmt: skip
    while not evo.done:
        batch = evo.ask()
        for g, v in zip(batch, score(batch)):
            evo.tell(g, float(v))
    return evo
