"""The first-order sensitivity behind the cheap search's gradient strategy: a differentiable Fréchet
distance, straight-through activation quantizers, and single-gene predictions on a tiny model
against the measured changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qdit.errors import QditError
from qdit.eval.features import FeatureSpace
from qdit.eval.metrics import feature_stats, frechet_distance
from qdit.nn.quant_linear import ActQuantizer
from qdit.recipe import QuantSpec
from qdit.search.fitness import FitnessConfig, ModelObjective
from qdit.search.gradient import Sensitivity, distance_gradient
from qdit.search.recipes import searchable_layers
from qdit.search.space import build_space

FIT = FitnessConfig(steps=4, batch_size=16)
BASE = QuantSpec(w_bits=4, a_bits=8, w_group=64, a_group=64)


def _fd(f: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> float:
    return float(frechet_distance(*feature_stats(f), mu, sigma))


@pytest.mark.parametrize("n,d", [(30, 5), (6, 10)])  # more samples than dimensions, and fewer
def test_differentiable_frechet_distance_matches_numpy_and_finite_differences(n, d):
    rng = np.random.default_rng(0)
    f = rng.standard_normal((n, d))
    ref = rng.standard_normal((50, d)) * 1.3 + 0.2
    mu, sigma = ref.mean(0), np.cov(ref, rowvar=False)
    value, grad = distance_gradient(f, mu, sigma)
    assert value == pytest.approx(_fd(f, mu, sigma), rel=1e-6)
    assert grad.shape == (n, d)
    eps = 1e-5
    for i, j in ((0, 0), (n - 1, d - 1), (2, 1)):
        up, down = f.copy(), f.copy()
        up[i, j] += eps
        down[i, j] -= eps
        # (numpy's value is checked above; its sqrtm is too rough for differences of singular matrices)
        numeric = (distance_gradient(up, mu, sigma)[0] - distance_gradient(down, mu, sigma)[0]) / (2 * eps)
        assert grad[i, j] == pytest.approx(numeric, rel=1e-3, abs=1e-5)


def test_activation_quantizer_is_straight_through_under_autograd():
    q = ActQuantizer(16, 4, group=8)
    x = torch.randn(3, 5, 16)
    plain = q(x)
    xg = x.clone().requires_grad_(True)
    out = q(xg)
    assert torch.allclose(out.detach(), plain, atol=1e-6)  # the same quantized values forward
    assert not torch.allclose(plain, x, atol=1e-3)  # (which are not the input)
    out.sum().backward()
    assert torch.equal(xg.grad, torch.ones_like(x))  # and the identity's gradient backward


def differentiable_toy_features(dim: int = 6) -> FeatureSpace:
    proj = np.random.default_rng(0).standard_normal((64, dim)).astype(np.float32)
    ref = np.random.default_rng(1).standard_normal((200, dim))
    proj_t = torch.from_numpy(proj)

    def extract(images: np.ndarray) -> np.ndarray:
        return (images.reshape(len(images), -1).astype(np.float32) / 127.5 - 1) @ proj

    def differentiable(x: torch.Tensor) -> torch.Tensor:  # the same, from model-space NCHW images
        return x.float().clamp(-1, 1).permute(0, 2, 3, 1).reshape(len(x), -1) @ proj_t

    return FeatureSpace("toy_fd", extract, ref.mean(0), np.cov(ref, rowvar=False), differentiable)


def test_sensitivity_predicts_every_single_gene_change(tiny_dit):
    space = build_space(searchable_layers(tiny_dit, BASE), 4, 8)
    obj = ModelObjective.build(tiny_dit, space, BASE, differentiable_toy_features(), FIT, with_proxy=False)
    n = 12
    g = space.uniform(64)
    here = obj.fitness(g, n)
    sens = obj.sensitivity(g, n, here.features)
    assert isinstance(sens, Sensitivity)
    assert [sorted(row) for row in sens.table] == [sorted(gene.choices) for gene in space.genes]
    assert all(row[v] == 0.0 for row, v in zip(sens.table, g))
    # its own value is the fitness, from unrounded pixels
    assert sens.cost.value == pytest.approx(here.value, rel=0.02)
    alts = max(len(gene.choices) - 1 for gene in space.genes)  # one gene per layer here
    assert sens.cost.images == n and sens.cost.forwards == n * obj.forwards_per_image * (3 + alts)
    predicted, measured = [], []
    for i, gene in enumerate(space.genes):
        for c in gene.choices:
            if c != g[i]:
                changed = g[:i] + (c,) + g[i + 1 :]
                predicted.append(sens.table[i][c])
                measured.append(obj.fitness(changed, n).value - here.value)
    predicted_a, measured_a = np.array(predicted), np.array(measured)
    assert np.corrcoef(predicted_a, measured_a)[0, 1] > 0.9
    assert np.abs(predicted_a - measured_a).mean() < 0.3 * np.abs(measured_a).mean()
    # the pass leaves the model as it was
    assert obj.fitness(g, n).value == here.value
    # no features of its own: they are sampled first, and paid for
    again = obj.sensitivity(g, n)
    assert again.cost.images == 2 * n and again.table == sens.table


@pytest.mark.parametrize("method", ["ddim", "ddpm"])
def test_step_by_step_backward_gives_the_one_graph_sensitivity(tiny_dit, method):
    """``backward="steps"`` (one step's graph at a time, what clips use) backpropagates the same
    gradients into every probe as one graph over all steps (DDPM: with the same noise per step), and
    charges the extra forward; ``auto`` is the one graph for images; a bad value is refused."""
    from dataclasses import replace

    space = build_space(searchable_layers(tiny_dit, BASE), 4, 8)
    tables, costs = {}, {}
    for backward in ("graph", "steps", "auto"):
        fit = replace(FIT, method=method, backward=backward)
        obj = ModelObjective.build(tiny_dit, space, BASE, differentiable_toy_features(), fit, with_proxy=False)
        assert obj.stepwise_backward == (backward == "steps")
        g = space.uniform(64)
        sens = obj.sensitivity(g, 6, obj.fitness(g, 6).features)
        tables[backward], costs[backward] = sens.table, sens.cost.forwards
    assert tables["auto"] == tables["graph"]
    flat = [(d, tables["steps"][i][c]) for i, row in enumerate(tables["graph"]) for c, d in row.items()]
    assert any(abs(a) > 1e-3 for a, _ in flat)
    for a, b in flat:
        assert b == pytest.approx(a, rel=1e-4, abs=1e-6)
    assert costs["steps"] - costs["graph"] == 6 * FIT.forwards_per_image
    with pytest.raises(QditError, match="sensitivity backward must be one of auto, graph, steps"):
        FitnessConfig(backward="checkpoint")


def test_auto_backward_goes_step_by_step_for_clips_and_the_cheap_state_says_so(tmp_path):
    """``auto`` resolves to the step-by-step backward on a video model (and gives the same sensitivity
    as ``steps``); a cheap gradient search's state fingerprint records it (its passes cost one more
    forward), so a state written with the one-graph backward is refused, not replayed differently."""
    from dataclasses import replace

    from tests.test_frame_quant import tiny_video

    from qdit.search.cheap import CheapConfig, run_cheap
    from qdit.search.cost import CostModel, default_budget

    video = tiny_video()
    space = build_space(searchable_layers(video, BASE), 4, 8)

    def clip_features() -> FeatureSpace:
        ref = np.random.default_rng(1).standard_normal((50, 4))
        proj = torch.from_numpy(np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32))  # 4 frames

        def differentiable(x: torch.Tensor) -> torch.Tensor:  # [N, C, T, H, W] -> per-frame means @ proj
            return x.float().mean(dim=(1, 3, 4)) @ proj

        def extract(clips: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(clips).float().div(127.5).sub(1)  # [N, T, H, W, C]
            return (t.mean(dim=(2, 3, 4)) @ proj).numpy()

        return FeatureSpace("toy_fvd", extract, ref.mean(0), np.cov(ref, rowvar=False), differentiable)

    tables = {}
    for backward in ("auto", "graph"):
        fit = replace(FIT, steps=2, batch_size=4, backward=backward)
        obj = ModelObjective.build(video, space, BASE, clip_features(), fit, with_proxy=False)
        assert obj.stepwise_backward == (backward == "auto")
        g = space.uniform(64)
        tables[backward] = obj.sensitivity(g, 4, obj.fitness(g, 4).features).table
    for row_a, row_g in zip(tables["auto"], tables["graph"]):
        for c in row_g:
            assert row_a[c] == pytest.approx(row_g[c], rel=1e-4, abs=1e-6)
    cost = CostModel()
    budget = default_budget(space, cost)
    cheap = CheapConfig(budget_evals=2)
    state = tmp_path / "s.json"
    graph = ModelObjective.build(video, space, BASE, clip_features(), replace(FIT, steps=2, backward="graph"), with_proxy=False)
    run_cheap(space, cost, budget, graph, 2, cheap, 0, state, False)
    steps = ModelObjective.build(video, space, BASE, clip_features(), replace(FIT, steps=2), with_proxy=False)
    with pytest.raises(QditError, match="different"):
        run_cheap(space, cost, budget, steps, 2, cheap, 0, state, True)


def test_search_cli_offers_the_fitness_backward_modes():
    import argparse

    from qdit.commands.search import add_parser
    from qdit.search.fitness import BACKWARDS, SEARCH_KERNELS

    search = add_parser(argparse.ArgumentParser().add_subparsers())
    action = next(a for a in search._actions if a.dest == "sensitivity_backward")
    assert tuple(action.choices) == BACKWARDS and action.default == "auto"
    from qdit.commands.eval import add_parser as add_eval
    from qdit.eval.inception import DEFAULT_MODE, INCEPTION_MODES

    ev = add_eval(argparse.ArgumentParser().add_subparsers())
    for parser in (search, ev):  # both commands offer the Inception modes, defaulting to the same one
        mode = next(a for a in parser._actions if a.dest == "inception_mode")
        assert tuple(mode.choices) == INCEPTION_MODES and mode.default is None
    assert DEFAULT_MODE in INCEPTION_MODES
    kernel = next(a for a in search._actions if a.dest == "kernel")
    assert tuple(kernel.choices) == SEARCH_KERNELS and kernel.default is None  # None: auto, or the saved one


def test_sensitivity_needs_differentiable_features(tiny_dit):
    from tests.test_search_model import toy_features

    space = build_space(searchable_layers(tiny_dit, BASE), 4, 8)
    obj = ModelObjective.build(tiny_dit, space, BASE, toy_features(), FIT, with_proxy=False)
    assert not obj.has_sensitivity
    with pytest.raises(QditError, match="cannot be differentiated"):
        obj.sensitivity(space.uniform(64), 4)


def test_sensitivity_with_separate_activation_and_bits_genes(tiny_dit):
    space = build_space(searchable_layers(tiny_dit, BASE), 4, 8, separate_act=True, bits_choices=(4, 8))
    obj = ModelObjective.build(tiny_dit, space, BASE, differentiable_toy_features(), FIT, with_proxy=False)
    g = space.validate([gene.choices[-1] if gene.kind != "w_bits" else 4 for gene in space.genes])
    sens = obj.sensitivity(g, 6)
    kinds = {gene.kind for gene in space.genes}
    assert kinds == {"w_group", "a_group", "w_bits"}
    for gene, row, v in zip(space.genes, sens.table, g):
        assert sorted(row) == sorted(gene.choices) and row[v] == 0.0
        assert all(np.isfinite(d) for d in row.values())
    # 8-bit weights move the samples towards the float model's: a real, finite change is predicted
    bits = [row for gene, row in zip(space.genes, sens.table) if gene.kind == "w_bits"]
    assert any(abs(row[8]) > 0 for row in bits)
    per_layer = max(
        sum(len(gene.choices) - 1 for gene in space.genes if gene.layer == name)
        for name in {x.layer for x in space.genes}
    )
    assert sens.cost.forwards == 6 * obj.forwards_per_image * (3 + per_layer) + 6 * obj.forwards_per_image


def test_sensitivity_of_a_fitness_against_the_float_models_samples(tiny_dit):
    from dataclasses import replace

    space = build_space(searchable_layers(tiny_dit, BASE), 4, 8)
    fit = replace(FIT, reference="fp")
    obj = ModelObjective.build(tiny_dit, space, BASE, differentiable_toy_features(), fit, with_proxy=False)
    g, n = space.uniform(64), 8
    here = obj.fitness(g, n)  # draws the float model's 8 samples too
    sens = obj.sensitivity(g, n, here.features)
    assert sens.cost.images == n  # the float samples are cached: not drawn (nor paid) again
    i, c = next((i, c) for i, gene in enumerate(space.genes) for c in gene.choices if c != g[i])
    changed = g[:i] + (c,) + g[i + 1 :]
    measured = obj.fitness(changed, n).value - here.value
    assert np.sign(sens.table[i][c]) == np.sign(measured) or abs(measured) < 1e-3
    fresh = ModelObjective.build(tiny_dit, space, BASE, differentiable_toy_features(), fit, with_proxy=False)
    assert fresh.sensitivity(g, n, here.features).cost.images == 2 * n  # its own float samples first
