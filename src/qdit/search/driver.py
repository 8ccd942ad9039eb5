"""What drives a group-size search on a model: :func:`search_groups` (what ``qdit search`` runs: the
space, the objective and the method) and :func:`heldout_fitness`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qdit.diffusion.distributed import DistContext
from qdit.errors import QditError
from qdit.eval.features import FeatureSpace
from qdit.quant.rules import ActGranularity, parse_act_granularity
from qdit.recipe import QuantSpec, Recipe
from qdit.search.cheap import CheapConfig, run_cheap
from qdit.search.cost import Budget, CostModel, baseline_group, check_feasible, default_budget, only_candidate
from qdit.search.evolution import EvolutionConfig
from qdit.search.fitness import FitnessConfig, ModelObjective
from qdit.search.recipes import genome_recipe, searchable_layers
from qdit.search.runner import run_full
from qdit.search.session import SearchResult, saved_kernel, shared_saved_objective
from qdit.search.space import CandidateRule, Genome, build_space

METHODS = ("cheap", "full")


@dataclass
class SearchOutcome:
    result: SearchResult
    recipe: Recipe
    report: dict
    objective: ModelObjective = field(repr=False)


@dataclass(frozen=True)
class SearchConfig:
    """What a group-size search searches and how (the run's environment, a state file, ranks, device,
    is not part of it). ``method``: ``"cheap"`` (the default; see :mod:`qdit.search.cheap`) or
    ``"full"`` (the paper's evolutionary search). The fitness is the Fréchet distance of
    ``num_samples`` samples drawn as ``fitness`` says. Group choices per layer:
    ``layer_choices[name]``, else the divisors of its width among ``choices`` (default: the paper's
    ``{32, 64, 128, 192, 288}``), or ``rule``'s width-derived candidates. ``symmetric`` sets both
    quantizers; ``w_symmetric`` / ``a_symmetric`` each one alone (the authors' search script's
    ``--w_sym`` / ``--a_sym``)."""

    w_bits: int = 4
    a_bits: int = 8
    method: str = "cheap"
    budget: Budget | None = None  # default: the paper's mean group >= 128 (see default_budget)
    num_samples: int = 64
    fitness: FitnessConfig | None = None  # default: FitnessConfig(seed=seed)
    evolution: EvolutionConfig | None = None
    cheap: CheapConfig | None = None
    choices: Sequence[int] | None = None
    rule: CandidateRule | None = None
    layer_choices: Mapping[str, Sequence[int]] | None = None
    separate_act: bool = False
    bits_choices: Sequence[int] = ()
    act_granularity: str | ActGranularity = "token"  # kept as its spelling ("token"; PerToken() accepted)
    weight_method: str = "rtn"
    symmetric: bool = False
    w_symmetric: bool | None = None
    a_symmetric: bool | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise QditError(f"unknown search method {self.method!r}; use {' or '.join(METHODS)}")
        if self.num_samples < 2:
            raise QditError(f"the fitness needs at least 2 samples, got {self.num_samples}")
        gran = parse_act_granularity(self.act_granularity, "act_granularity", QditError)
        object.__setattr__(self, "act_granularity", gran.spelling)  # frozen: stored as its spelling

    @property
    def w_sym(self) -> bool:
        return self.symmetric if self.w_symmetric is None else self.w_symmetric

    @property
    def a_sym(self) -> bool:
        return self.symmetric if self.a_symmetric is None else self.a_symmetric


def search_groups(
    model: nn.Module,
    features: FeatureSpace,
    config: SearchConfig | None = None,
    *,
    state_path: str | Path | None = None,
    resume: bool = False,
    dist: DistContext | None = None,
    progress: bool = False,
    model_name: str = "model",
    device: torch.device | str = "cpu",
    **settings: Any,
) -> SearchOutcome:
    """Search per-layer group sizes (and optionally bits) of ``model`` as ``config`` says (or, instead of a
    config, its fields as keywords: ``search_groups(model, features, method="full", num_samples=16)``).

    ``model`` is not changed (a copy is quantized). ``state_path``: the resumable state file (resumed
    with ``resume``); ``dist``: the ranks to spread candidates over.
    """
    if config is not None and settings:
        raise QditError("give a SearchConfig or its fields as keywords, not both")
    config = config if config is not None else SearchConfig(**settings)
    c = config
    w_bits, a_bits, method, budget, num_samples, seed = (
        c.w_bits,
        c.a_bits,
        c.method,
        c.budget,
        c.num_samples,
        c.seed,
    )
    w_sym, a_sym = c.w_sym, c.a_sym
    fitness, evolution, cheap = c.fitness, c.evolution, c.cheap
    choices, rule, layer_choices = c.choices, c.rule, c.layer_choices
    separate_act, bits_choices = c.separate_act, c.bits_choices
    act_granularity, weight_method = c.act_granularity, c.weight_method
    fitness = fitness or FitnessConfig(seed=seed)
    dist = dist or DistContext.current()
    fitness = replace(fitness, kernel=search_kernel(fitness, state_path, resume, dist))
    base = QuantSpec(
        w_bits=w_bits, a_bits=a_bits, w_group=0, a_group=0, act_granularity=act_granularity,
        weight_method=weight_method, w_symmetric=w_sym, a_symmetric=a_sym,
    )  # fmt: skip
    layers = searchable_layers(model, base)
    if not layers:
        raise QditError("the model has no layer to search over")
    space = build_space(layers, w_bits, a_bits, choices, rule, separate_act, bits_choices, layer_choices)
    cost = CostModel(symmetric=w_sym)  # symmetric weights store no zero points
    budget = budget or default_budget(space, cost)
    check_feasible(space, cost, budget)
    g0 = baseline_group(space, cost, budget)
    if only_candidate(space, cost, budget):
        sizes = sorted(space.all_groups())
        raise QditError(
            f"with the group sizes {sizes} and the budget {budget.describe()}, uniform group {g0} is the only "
            "candidate: nothing to search; give more sizes (--choices width derives them from each layer's "
            "width) or a looser budget"
        )
    base = QuantSpec(**{**base.to_dict(), "w_group": g0, "a_group": g0})
    objective = ModelObjective.build(
        model, space, base, features, fitness, model_name=model_name, device=device, with_proxy=method == "cheap" and (cheap or CheapConfig()).screen,
        progress=progress,
    )  # fmt: skip
    if method == "full":
        result = run_full(
            space, cost, budget, objective, num_samples, evolution, seed, state_path, resume, dist, progress
        )
    else:
        result = run_cheap(
            space, cost, budget, objective, num_samples, cheap, seed, state_path, resume, dist, progress
        )
    recipe = genome_recipe(space, result.best_genome, base)
    report = result.report(cost)
    report.update(
        model=model_name,
        w_bits=w_bits,
        a_bits=a_bits,
        fitness_metric=features.name
        if fitness.reference == "data"
        else f"{features.name} to the float model",
        steps=fitness.steps,
        cfg_scale=fitness.cfg_scale,
        cfg_channels=fitness.cfg_channels,
        kernel=fitness.kernel,
        w_symmetric=w_sym,
        a_symmetric=a_sym,
        seed=seed,
        recipe=recipe.to_dict(),
    )
    return SearchOutcome(result, recipe, report, objective)


def search_kernel(
    fitness: FitnessConfig, state_path: str | Path | None, resume: bool, dist: DistContext
) -> str:
    """The kernel a search's candidates run on: the one asked for; else, resuming, what the saved search
    ran with (read by rank 0, which alone may see the state file, and sent to the others); else auto."""
    if fitness.kernel is not None:
        return fitness.kernel
    return saved_kernel(shared_saved_objective(state_path, dist) if resume else None)


def heldout_fitness(
    objective: ModelObjective,
    genomes: dict[str, Genome],
    seeds: Sequence[int],
    num_samples: int,
    progress: bool = False,
    reference: str | None = None,
    also: Sequence[str] = (),
) -> dict[str, dict]:
    """Fitness of each named genome on sample seeds the search never saw: per seed, mean and std.

    ``reference``: ``"data"`` or ``"fp"`` (default: the objective's). ``also``: more references
    measured on the same samples, reported under ``"<name>@<reference>"``.
    """
    refs = [reference or objective.config.reference, *also]
    vals: dict[str, list[float]] = {}
    distinct = {tuple(int(v) for v in g) for g in genomes.values()}  # names may share a genome
    measured: dict[tuple[Genome, int], list[float]] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(distinct) * len(seeds), desc="held-out seeds", unit="eval")
    for name, genome in genomes.items():
        genome = tuple(int(v) for v in genome)
        for s in seeds:
            if (genome, s) not in measured:
                feats, out = None, []
                for ref in refs:
                    ev = objective.fitness_at(genome, num_samples, feats, s, ref)
                    feats = ev.features
                    out.append(ev.value)
                measured[(genome, s)] = out
                if bar is not None:
                    bar.update(1)
            for k, ref in enumerate(refs):
                vals.setdefault(name if k == 0 else f"{name}@{ref}", []).append(measured[(genome, s)][k])
    if bar is not None:
        bar.close()
    return {
        key: {"seeds": list(seeds), "values": v, "mean": float(np.mean(v)), "std": float(np.std(v))}
        for key, v in vals.items()
    }
