"""The setting both search benchmarks measure: a model's block linears at W4A8 (RTN, token-group
dynamic activations), the paper's budget and the domain Fréchet distance as the fitness."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class SearchSetup:
    space: Any  # qdit.search.space.SearchSpace
    cost: Any  # qdit.search.cost.CostModel
    budget: Any  # qdit.search.cost.Budget
    baseline_group: int
    objective: Any  # qdit.search.fitness.ModelObjective


def w4a8_search_setup(model_name: str, steps: int, seed: int, with_proxy: bool = False) -> SearchSetup:
    from qdit.api import load_model
    from qdit.eval.features import domain_feature_space
    from qdit.recipe import QuantSpec
    from qdit.search.cost import CostModel, baseline_group, default_budget
    from qdit.search.fitness import FitnessConfig, ModelObjective
    from qdit.search.recipes import searchable_layers
    from qdit.search.space import CandidateRule, build_space

    model = load_model(model_name)
    # fake quantization, as when the committed results were measured (the search's kernel setting came
    # later; benchmarks/bench_search_kernel.py compares the two)
    # the width-derived choices ({32, 64, 128, 256} on the embedded model's widths), as in the committed
    # results: the paper's {32, 64, 128, 192, 288} leave only {32, 64, 128} there, and under "mean
    # group >= 128" a single legal genome
    layers = searchable_layers(model, QuantSpec(w_bits=4, a_bits=8, w_group=0, a_group=0))
    space = build_space(layers, 4, 8, rule=CandidateRule())
    cost = CostModel()
    budget = default_budget(space, cost)
    g0 = baseline_group(space, cost, budget)
    base = QuantSpec(w_bits=4, a_bits=8, w_group=g0, a_group=g0)
    objective = ModelObjective.build(
        model, space, base, domain_feature_space(), FitnessConfig(steps=steps, seed=seed, kernel="fake"),
        model_name=model_name, with_proxy=with_proxy,
    )  # fmt: skip
    return SearchSetup(space, cost, budget, g0, objective)
