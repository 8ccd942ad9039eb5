"""Automatic granularity allocation: search per-layer group sizes (and bits) under a cost budget.

* :mod:`~qdit.search.space` -- genes, candidate group sizes per layer width, genomes, building a space;
* :mod:`~qdit.search.cost` -- bits per weight (scales included), BitOps, the budget (and the default one)
  and its repair;
* :mod:`~qdit.search.evolution` -- the paper's evolutionary search as a resumable ask/tell loop;
  :mod:`~qdit.search.strategy` -- the ask/tell protocol of every strategy and the loop that drives them;
* :mod:`~qdit.search.objective` -- what a search measures (the :class:`Objective` protocol);
* :mod:`~qdit.search.session` -- a search's state file, resume, log, feature store, progress and result;
* :mod:`~qdit.search.runner` -- the full search; :mod:`~qdit.search.cheap` -- the cheap search (default),
  both spreading candidates over ranks with :mod:`qdit.diffusion.distributed`;
* :mod:`~qdit.search.gradient` -- the first-order sensitivity of the fitness to single-gene changes
  (one backward pass through the sampler), which drives the cheap search;
  :mod:`~qdit.search.surrogate` -- the additive surrogate of the fitness;
* :mod:`~qdit.search.fitness` -- the objective on a real model (fitness, sensitivity, proxy; the feature
  spaces are :mod:`qdit.eval.features`); :mod:`~qdit.search.recipes` -- the layers a spec searches on a
  model and a genome exported as a recipe; :mod:`~qdit.search.bank` -- the weight bank;
  :mod:`~qdit.search.driver` -- :class:`SearchConfig` and :func:`search_groups` (``qdit.search_recipe``
  is the facade over it); :mod:`~qdit.search.plot` -- PNG plots.

Names are imported lazily, so ``import qdit.search`` loads neither torch nor the model code.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CandidateRule": "qdit.search.space",
    "Gene": "qdit.search.space",
    "LayerInfo": "qdit.search.space",
    "SearchSpace": "qdit.search.space",
    "candidate_groups": "qdit.search.space",
    "build_space": "qdit.search.space",
    "Budget": "qdit.search.cost",
    "CostModel": "qdit.search.cost",
    "baseline_group": "qdit.search.cost",
    "default_budget": "qdit.search.cost",
    "EvolutionConfig": "qdit.search.evolution",
    "EvolutionSearch": "qdit.search.evolution",
    "Evaluation": "qdit.search.objective",
    "Objective": "qdit.search.objective",
    "StatefulObjective": "qdit.search.objective",
    "Sensitivity": "qdit.search.objective",
    "SearchResult": "qdit.search.session",
    "SearchSession": "qdit.search.session",
    "run_full": "qdit.search.runner",
    "CheapConfig": "qdit.search.cheap",
    "GradientStrategy": "qdit.search.cheap",
    "BayesStrategy": "qdit.search.cheap",
    "Ask": "qdit.search.strategy",
    "Strategy": "qdit.search.strategy",
    "drive": "qdit.search.strategy",
    "run_cheap": "qdit.search.cheap",
    "FeatureSpace": "qdit.eval.features",
    "FitnessConfig": "qdit.search.fitness",
    "ModelObjective": "qdit.search.fitness",
    "genome_recipe": "qdit.search.recipes",
    "searchable_layers": "qdit.search.recipes",
    "SearchConfig": "qdit.search.driver",
    "search_groups": "qdit.search.driver",
    "heldout_fitness": "qdit.search.driver",
    "search_plot": "qdit.search.plot",
    "line_plot": "qdit.search.plot",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'qdit.search' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
