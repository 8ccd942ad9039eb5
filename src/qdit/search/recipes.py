"""Where the search meets recipes: the layers a base spec searches on a model (:func:`searchable_layers`)
and a genome exported as a :class:`qdit.recipe.Recipe` that ``qdit quantize --recipe`` applies
(:func:`genome_recipe`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from torch import nn

from qdit.calib.quantize import resolve_specs
from qdit.models.adapter import get_adapter
from qdit.recipe import QuantSpec, Recipe
from qdit.search.space import LayerInfo, SearchSpace


def searchable_layers(model: nn.Module, base: QuantSpec) -> list[LayerInfo]:
    """The linears that ``base`` quantizes on ``model`` (its adapter's default set), in model order."""
    specs = resolve_specs(model, Recipe(default=replace(base, w_group=0, a_group=0)))
    modules = dict(model.named_modules())
    tokens = get_adapter(model).tokens_per_sample(model) or 1  # for the cost model; 1 when unknown
    return [LayerInfo(n, modules[n].in_features, modules[n].out_features, tokens) for n in specs]


def genome_recipe(space: SearchSpace, genome: Sequence[int], base: QuantSpec) -> Recipe:
    """A recipe that ``qdit quantize --recipe`` applies: ``base`` plus each searched layer's groups/bits."""
    settings = space.settings(genome)
    overrides = {}
    for layer in space.layers:
        s = settings[layer.name]
        o: dict[str, int] = {"w_group": s.w_group, "a_group": s.a_group}
        if s.w_bits != base.w_bits:
            o["w_bits"] = s.w_bits
        overrides[layer.name] = o
    return Recipe(default=base, overrides=overrides)
