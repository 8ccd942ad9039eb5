"""The search on a (tiny, random) model: bank, fitness with sample reuse, proxy, recipe, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from qdit.diffusion.sampler import SamplerConfig, default_labels, generate, to_uint8_nhwc
from qdit.errors import QditError
from qdit.eval.features import FeatureSpace
from qdit.recipe import QuantSpec, Recipe
from qdit.search.cheap import CheapConfig
from qdit.search.cost import Budget, CostModel, default_budget
from qdit.search.driver import heldout_fitness, search_groups
from qdit.search.evolution import EvolutionConfig
from qdit.search.fitness import FitnessConfig, ModelObjective
from qdit.search.recipes import genome_recipe, searchable_layers
from qdit.search.space import CandidateRule, build_space

FIT = FitnessConfig(steps=4, batch_size=16, proxy_samples=2, proxy_steps=4)
BASE = QuantSpec(w_bits=4, a_bits=8, w_group=64, a_group=64)


def toy_features(dim: int = 6) -> FeatureSpace:
    proj = np.random.default_rng(0).standard_normal((64, dim)).astype(np.float32)
    ref = np.random.default_rng(1).standard_normal((200, dim))

    def extract(images: np.ndarray) -> np.ndarray:
        return (images.reshape(len(images), -1).astype(np.float32) / 127.5 - 1) @ proj

    return FeatureSpace("toy_fd", extract, ref.mean(0), np.cov(ref, rowvar=False))


@pytest.fixture
def objective(tiny_dit):
    layers = searchable_layers(tiny_dit, BASE)
    space = build_space(layers, 4, 8)
    return ModelObjective.build(tiny_dit, space, BASE, toy_features(), FIT, model_name="tiny")


def test_space_of_a_dit(tiny_dit):
    layers = searchable_layers(tiny_dit, BASE)
    assert [x.name for x in layers][:4] == [
        "blocks.0.attn.qkv",
        "blocks.0.attn.proj",
        "blocks.0.mlp.fc1",
        "blocks.0.mlp.fc2",
    ]
    assert {x.tokens for x in layers} == {tiny_dit.config.num_patches}  # from the adapter
    space = build_space(layers, 4, 8)  # the paper's sizes that divide the widths 64 and 256
    assert space.genes[0].choices == (32, 64) and space.genes[3].choices == (32, 64, 128)
    ruled = build_space(layers, 4, 8, rule=CandidateRule())  # the width-derived candidates
    assert ruled.genes[0].choices == (32, 64) and ruled.genes[3].choices == (32, 64, 128, 256)
    budget = default_budget(space, CostModel())
    assert budget.value == 64  # 128 is more than the 64-wide layers allow
    with pytest.raises(QditError):
        build_space(layers, 4, 8, choices=(48,))


@pytest.mark.parametrize("kernel", ["fake", "auto"])
def test_switching_groups_matches_quantizing_directly(tiny_dit, kernel):
    """Candidates switched in the bank run as the same recipe quantized directly: on fake quantization,
    or (``auto``) on the AMX integer kernel, each variant's layout prepared once and reused."""
    import copy

    from qdit.api import quantize
    from qdit.kernels.cpu import cpu_extension
    from qdit.nn.swap import quant_layers

    if kernel == "auto" and cpu_extension() is None:
        pytest.skip("no AMX extension on this machine")
    objective = ModelObjective.build(
        tiny_dit, build_space(searchable_layers(tiny_dit, BASE), 4, 8), BASE, toy_features(),
        replace(FIT, kernel=kernel), model_name="tiny",
    )  # fmt: skip
    space = objective.space
    rng = np.random.default_rng(0)
    x = torch.randn(3, 1, 8, 8)
    t = torch.tensor([1, 500, 999])
    y = torch.tensor([0, 1, 2])
    layouts = {}
    for _ in range(3):
        g = space.random(rng)
        objective.apply(g)
        ref = quantize(copy.deepcopy(tiny_dit), genome_recipe(space, g, BASE), kernel="fake")
        for name, layer in quant_layers(ref).items():
            if kernel == "auto":
                layer.set_kernel("amx")
                layouts.setdefault((name, layer.spec.w_group), quant_layers(objective.model)[name]._kw)
            assert quant_layers(objective.model)[name].kernel == layer.kernel
        with torch.no_grad():
            assert torch.equal(objective.model(x, t, y), ref(x, t, y))
    if kernel == "auto":  # a variant met again runs on the layout prepared the first time
        objective.apply(space.uniform(64))
        for name, layer in quant_layers(objective.model).items():
            if (name, 64) in layouts:
                assert layer._kw is layouts[name, 64]
        grads = []
        for integer in (True, False):  # a pass that needs a gradient goes through fake quantization
            for layer in objective.layers.values():
                layer.run_integer(integer)
            with torch.enable_grad():
                xg = x.clone().requires_grad_(True)
                objective.model(xg, t, y).square().sum().backward()
            grads.append(xg.grad)
        assert grads[0] is not None and torch.equal(grads[0], grads[1])
    assert objective.describe().get("kernel") == (None if kernel == "fake" else "auto")


def test_fitness_reuses_samples_and_is_paired(objective):
    space = objective.space
    g = space.uniform(64)
    full = objective.fitness(g, 6)
    part = objective.fitness(g, 3)
    ext = objective.fitness(g, 6, part.features)
    assert ext.images == 3 and full.images == 6 and part.images == 3
    assert ext.value == pytest.approx(full.value, rel=1e-6)
    assert objective.fitness(g, 6).value == full.value  # same noise and labels every time
    assert objective.fitness_at(g, 6, None, seed=7).value != full.value
    assert full.forwards == 6 * FIT.steps * 2
    p = objective.proxy(g)
    assert p.value >= 0 and p.images == 0 and p.forwards == FIT.proxy_samples * 2 * FIT.proxy_steps


def test_samples_match_plain_generation(objective, tiny_dit):
    """The objective's samples are the sampler's samples of the quantized model (seeded per index)."""
    g = objective.space.uniform(32)
    objective.apply(g)
    imgs = objective.samples(g, 2, 5)
    direct = generate(
        objective.model,
        (1, 8, 8),
        3,
        default_labels(5, 3)[2:5],
        FIT.seed,
        SamplerConfig(4),
        indices=[2, 3, 4],
    )
    assert np.array_equal(imgs, to_uint8_nhwc(direct))


@pytest.mark.parametrize("method", ["cheap", "cheap-gradient", "full"])
def test_search_groups_end_to_end(tiny_dit, tmp_path, method):
    from tests.test_search_gradient import differentiable_toy_features

    gradient = method == "cheap-gradient"
    out = search_groups(
        tiny_dit, differentiable_toy_features() if gradient else toy_features(), method=method.split("-")[0],
        num_samples=4, fitness=FIT, evolution=EvolutionConfig(population=4, top_k=2, generations=2),
        cheap=CheapConfig(pool=3, lofi_batch=3, lofi_rounds=2, shortlist=2, proxy_population=10, proxy_generations=3, lofi_min_samples=2, budget_evals=14, candidates=2),
        state_path=tmp_path / "s.json", model_name="tiny",
    )  # fmt: skip
    r = out.report
    assert r["budget"]["met"]
    if method != "full":  # features that cannot be differentiated: the bayes strategy
        assert r["strategy"] == ("gradient" if gradient else "bayes")
        assert (r["sensitivity_passes"] > 0) == gradient
        assert r["image_equivalents"] <= 14 * 4 or not gradient
    assert r["baseline_group_size"] == 64
    for key in ("baseline_fitness", "best_fitness", "budget", "evaluations", "images_sampled"):
        assert key in r
    # the recipe applies with the quant core and reproduces the searched model exactly
    recipe = Recipe.from_json(out.recipe.to_json())
    from qdit.api import quantize

    q = quantize(__import__("copy").deepcopy(tiny_dit), recipe, kernel="fake")
    out.objective.apply(out.result.best_genome)
    from qdit.kernels.cpu import cpu_extension
    from qdit.nn import kernel_paths

    assert r["kernel"] == "auto"  # the search ran its candidates on integer kernels where they apply
    assert ("amx" in kernel_paths(out.objective.model).values()) == (cpu_extension() is not None)
    for layer in out.objective.layers.values():  # compared on fake quantization: exactly equal
        layer.run_integer(False)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 900]), torch.tensor([1, 2])
    with torch.no_grad():
        assert torch.equal(q(x, t, y), out.objective.model(x, t, y))
    calls = []
    original = out.objective.fitness_at
    out.objective.fitness_at = lambda *a, **k: calls.append(a) or original(*a, **k)  # type: ignore[method-assign]
    g = out.result.best_genome
    h = heldout_fitness(out.objective, {"best": g, "same": g}, [5, 6], 4)
    assert len(h["best"]["values"]) == 2 and h["same"] == h["best"]
    assert len(calls) == 2  # a genome under two names is measured once per seed


def _tiny_checkpoint(tiny_dit, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_dit.state_dict().items()}, str(path))
    arch = json.dumps(tiny_dit.config.to_dict())
    return str(path), arch


def test_cli_search_writes_recipe_report_plot_and_resumes(tiny_dit, tmp_path, monkeypatch):
    from tests.test_search_gradient import differentiable_toy_features

    import qdit.commands.search as cmd
    from qdit.cli import main

    monkeypatch.setattr(cmd, "_features", lambda args, model, device: differentiable_toy_features())
    ckpt, arch = _tiny_checkpoint(tiny_dit, tmp_path)
    argv = [
        "search", "--model", ckpt, "--arch", arch, "--num-samples", "4", "--steps", "3", "--batch-size", "8",
        "--candidates", "2", "--cheap-budget", "16", "--out", str(tmp_path / "r.json"),
        "--json", str(tmp_path / "rep.json"), "--plot", str(tmp_path / "p.png"), "--no-progress", "--device", "cpu",
        "--heldout-seeds", "11,12", "--heldout-samples", "3",
    ]  # fmt: skip
    assert main(argv) == 0
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert rep["method"] == "cheap" and rep["budget"]["met"]
    assert rep["strategy"] == "gradient" and rep["sensitivity_passes"] >= 1
    assert rep["image_equivalents"] <= 16 * 4
    assert {"best", "baseline", "best@fp", "baseline@fp"} == set(rep["heldout"])
    recipe = Recipe.load(tmp_path / "r.json")
    assert len(recipe.overrides) == 8
    from PIL import Image
    from tests.test_search_plot import not_blank

    plot = Image.open(tmp_path / "p.png")  # one 720 x 440 panel, a second below for low-fidelity rounds
    assert plot.size in ((720, 440), (720, 880)) and not_blank(plot)
    # resuming a finished search evaluates nothing and gives the same answer
    assert main([*argv, "--resume", "--json", str(tmp_path / "rep2.json")]) == 0
    rep2 = json.loads((tmp_path / "rep2.json").read_text())
    assert rep2["history"] == rep["history"] and rep2["best_genome"] == rep["best_genome"]


def test_cli_full_search_with_its_options(tiny_dit, tmp_path, monkeypatch):
    """--method full with the authors' options: populations of 4 + 1 epoch = 8 evaluations."""
    import qdit.commands.search as cmd
    from qdit.cli import main

    monkeypatch.setattr(cmd, "_features", lambda args, model, device: toy_features())
    ckpt, arch = _tiny_checkpoint(tiny_dit, tmp_path)
    layers = tmp_path / "layers.json"
    layers.write_text(json.dumps({"blocks.1.mlp.fc2": [64, 256]}))
    argv = [
        "search", "--model", ckpt, "--arch", arch, "--method", "full", "--population", "4", "--top-k", "2",
        "--generations", "1", "--crossovers", "1", "--mutations", "2", "--choices", "width",
        "--layer-choices", str(layers), "--cfg-channels", "1", "--a-symmetric", "--num-samples", "2",
        "--steps", "2", "--out", str(tmp_path / "r.json"), "--json", str(tmp_path / "rep.json"),
        "--no-progress", "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert rep["evaluations"] == 8 and [h["stage"] for h in rep["history"]].count("generation 1") == 4
    assert [p["seeds"] + p["mutation"] + p["crossover"] + p["random"] for p in rep["populations"]] == [4, 4]
    assert rep["populations"][1]["mutation"] <= 2 and rep["populations"][1]["crossover"] <= 1
    assert rep["cfg_channels"] == 1 and (rep["w_symmetric"], rep["a_symmetric"]) == (False, True)
    fc2 = rep["best_layers"]["blocks.1.mlp.fc2"]["w_group"]
    assert fc2 in (64, 256)
    assert Recipe.load(tmp_path / "r.json").default.a_symmetric


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "fast"], "--method"),
        (["--budget-group", "-3"], "--budget-group"),
        (["--choices", "32,x"], "--choices"),
        (["--bits-choices", "4,8"], "--budget-bpw"),
        (["--model", "/nonexistent/model.pt"], "model not found"),
        (["--exploit", "-1"], "--exploit"),
        (["--lofi-rounds", "0"], "--lofi-rounds"),
        (["--candidates", "0"], "--candidates"),
        (["--screen"], "--strategy bayes"),
        (["--strategy", "bayes", "--cheap-budget", "20"], "gradient strategy"),
        (["--crossovers", "15"], "--method full"),
        (["--method", "full", "--crossovers", "40"], "exceed the population"),
        (["--cfg-channels", "2"], "--cfg-channels is 2, but the model predicts noise for 1 channels"),
        # the paper's sizes on the embedded model's widths (256, 1024) are {32, 64, 128}: under its
        # budget "mean group >= 128" only uniform 128 is legal
        ([], "uniform group 128 is the only candidate: nothing to search"),
        (["--layer-choices", "/nonexistent.json"], "--layer-choices: cannot read"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, extra, message):
    proc = subprocess.run(
        [sys.executable, "-m", "qdit", "search", "--out", str(tmp_path / "r.json"), *extra],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "r.json").exists()


def test_cli_killed_midway_resumes_without_reevaluating(tiny_dit, tmp_path, monkeypatch):
    """Interrupt the search after k sample-based evaluations; --resume finishes, evaluating nothing twice."""
    import qdit.commands.search as cmd
    from qdit.cli import main
    from qdit.search.space import genome_key

    monkeypatch.setattr(cmd, "_features", lambda args, model, device: toy_features())
    calls: list[tuple[str, int, int, str]] = []
    original = ModelObjective.fitness_at
    limit = {"k": 7}

    def counting(self, genome, num_samples, known, seed, reference=None):
        if len(calls) >= limit["k"]:
            raise KeyboardInterrupt
        calls.append(
            (genome_key(genome), num_samples, 0 if known is None else len(known), reference or "data")
        )
        return original(self, genome, num_samples, known, seed, reference)

    monkeypatch.setattr(ModelObjective, "fitness_at", counting)
    ckpt, arch = _tiny_checkpoint(tiny_dit, tmp_path)
    argv = [
        "search", "--model", ckpt, "--arch", arch, "--num-samples", "8", "--steps", "2", "--batch-size", "8",
        "--strategy", "bayes", "--lofi-batch", "4", "--lofi-rounds", "2", "--lofi-samples", "2", "--shortlist", "2",
        "--out", str(tmp_path / "r.json"), "--lofi-measure", "fidelity",  # draws the float model's reference samples, which the state must keep
        "--json", str(tmp_path / "rep.json"), "--no-progress", "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 130
    assert not (tmp_path / "r.json").exists()
    first = list(calls)
    limit["k"] = 10**9
    assert main([*argv, "--resume"]) == 0
    second = calls[len(first) :]
    keys = [(k, n, r) for k, n, _, r in first + second]
    assert len(keys) == len(set(keys))  # every (candidate, samples, measure) measured once
    # a candidate extended across the interruption reused the features saved before it
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert sum(1 for h in rep["history"] if h["kind"] in ("fit", "fidelity")) == len(keys)
    setup = 0  # no proxy screening by default, so no full-precision trajectories for the proxy
    fp_ref = 8  # the float model's samples behind the fidelity (up to 8), drawn once across the resume
    assert rep["images_sampled"] >= setup + sum(n - have for _, n, have, _ in first + second)
    assert rep["images_sampled"] <= setup + fp_ref + sum(n - have for _, n, have, _ in first + second)
    assert any(have > 0 for _, _, have, _ in second)
    assert any(r == "fp" for _, _, _, r in first) and any(r == "fp" for _, _, _, r in second)
    # an uninterrupted run with the same seed agrees
    calls.clear()
    argv2 = [a if a != str(tmp_path / "r.json") else str(tmp_path / "r2.json") for a in argv]
    argv2[argv2.index("--json") + 1] = str(tmp_path / "rep2.json")
    assert main(argv2) == 0
    rep2 = json.loads((tmp_path / "rep2.json").read_text())
    assert rep2["best_genome"] == rep["best_genome"]
    # the same measurements in the same order, with the same values and image counts: the float
    # model's reference samples were saved with the state and are not drawn again
    assert rep2["history"] == rep["history"]


def test_import_is_light():
    code = "import sys, qdit.search, qdit.commands.search; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False"


def test_mixed_precision_and_separate_activation_genes(tiny_dit):
    from qdit.api import quantize

    layers = searchable_layers(tiny_dit, BASE)
    space = build_space(layers, 4, 8, separate_act=True, bits_choices=(4, 8))
    assert [g.kind for g in space.genes[:3]] == ["w_group", "a_group", "w_bits"]
    # compared with fake quantization, exactly: the genome's mapping onto the layers is what is tested
    obj = ModelObjective.build(tiny_dit, space, BASE, toy_features(), replace(FIT, kernel="fake"), with_proxy=False)
    rng = np.random.default_rng(3)
    budget = Budget("bpw", 5.0)
    from qdit.search.cost import repair

    g = repair(space, CostModel(), budget, space.random(rng), rng)
    obj.apply(g)
    recipe = genome_recipe(space, g, BASE)
    ref = quantize(__import__("copy").deepcopy(tiny_dit), Recipe.from_dict(recipe.to_dict()), kernel="fake")
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 900]), torch.tensor([1, 2])
    with torch.no_grad():
        assert torch.equal(ref(x, t, y), obj.model(x, t, y))
    s = space.settings(g)
    for name, layer in obj.layers.items():
        assert (layer.spec.w_group, layer.spec.a_group, layer.spec.w_bits) == (
            s[name].w_group,
            s[name].a_group,
            s[name].w_bits,
        )


def test_fitness_against_the_float_models_samples(tiny_dit):
    layers = searchable_layers(tiny_dit, BASE)
    space = build_space(layers, 4, 8)
    cfg = FitnessConfig(steps=3, batch_size=8, reference="fp")
    obj = ModelObjective.build(tiny_dit, space, BASE, toy_features(), cfg, with_proxy=False)
    g = space.uniform(64)
    first = obj.fitness(g, 6)
    assert first.images == 12  # its own 6 and the float model's 6 (once)
    again = obj.fitness(space.uniform(32), 6)
    assert again.images == 6
    ref, extra = obj.reference_features(6)
    assert extra == 0 and ref.shape[0] == 6
    assert first.value >= 0 and obj.describe()["reference"] == "fp"
    with pytest.raises(QditError):
        FitnessConfig(reference="real")


def test_cli_gradient_search_killed_midway_resumes_without_redoing_anything(tiny_dit, tmp_path, monkeypatch):
    """The default (gradient) strategy: neither a measurement nor a sensitivity pass is done twice."""
    from tests.test_search_gradient import differentiable_toy_features

    import qdit.commands.search as cmd
    from qdit.cli import main
    from qdit.search.space import genome_key

    monkeypatch.setattr(cmd, "_features", lambda args, model, device: differentiable_toy_features())
    fits: list[tuple[str, int]] = []
    sens: list[str] = []
    limit = {"k": 6}
    fit_original, sens_original = ModelObjective.fitness_at, ModelObjective.sensitivity

    def fit_counting(self, genome, num_samples, known, seed, reference=None):
        if len(fits) >= limit["k"]:
            raise KeyboardInterrupt
        fits.append((genome_key(genome), num_samples))
        return fit_original(self, genome, num_samples, known, seed, reference)

    def sens_counting(self, genome, num_samples, known=None):
        sens.append(genome_key(genome))
        return sens_original(self, genome, num_samples, known)

    monkeypatch.setattr(ModelObjective, "fitness_at", fit_counting)
    monkeypatch.setattr(ModelObjective, "sensitivity", sens_counting)
    ckpt, arch = _tiny_checkpoint(tiny_dit, tmp_path)
    argv = [
        "search", "--model", ckpt, "--arch", arch, "--num-samples", "6", "--steps", "2", "--batch-size", "8",
        "--candidates", "2", "--cheap-budget", "24", "--out", str(tmp_path / "r.json"),
        "--json", str(tmp_path / "rep.json"), "--no-progress", "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 130
    assert sens  # interrupted after its first sensitivity pass
    limit["k"] = 10**9
    assert main([*argv, "--resume"]) == 0
    assert len(fits) == len(set(fits)) and len(sens) == len(set(sens))
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert rep["strategy"] == "gradient" and rep["sensitivity_passes"] == len(sens) >= 2
    assert rep["image_equivalents"] <= 24 * 6
    # an uninterrupted run with the same seed agrees
    fits.clear()
    sens.clear()
    argv2 = [a if a != str(tmp_path / "r.json") else str(tmp_path / "r2.json") for a in argv]
    argv2[argv2.index("--json") + 1] = str(tmp_path / "rep2.json")
    assert main(argv2) == 0
    rep2 = json.loads((tmp_path / "rep2.json").read_text())
    assert rep2["best_genome"] == rep["best_genome"] and rep2["history"] == rep["history"]


@pytest.mark.parametrize("w_sym, a_sym", [(True, False), (False, True)])
def test_symmetric_quantizers_as_a_search_option(tiny_dit, tmp_path, w_sym, a_sym):
    """The authors' search script's --w_sym / --a_sym: each quantizer symmetric on its own."""
    from qdit.nn.swap import quant_layers

    out = search_groups(
        tiny_dit, toy_features(), method="full", num_samples=2, fitness=FIT,
        evolution=EvolutionConfig(population=3, top_k=2, generations=1), w_symmetric=w_sym, a_symmetric=a_sym,
        state_path=tmp_path / "s.json", model_name="tiny",
    )  # fmt: skip
    spec = out.recipe.default
    assert (spec.w_symmetric, spec.a_symmetric) == (w_sym, a_sym)
    layer = next(iter(quant_layers(out.objective.model).values()))
    assert (layer.spec.w_symmetric, layer.spec.a_symmetric) == (w_sym, a_sym)
    g = out.report["baseline_group_size"]
    zero_bits = 0 if w_sym else 4  # symmetric weights store no zero points
    assert out.report["cost"]["baseline"]["bpw"] == pytest.approx(4 + (16 + zero_bits) / g)
    assert (out.report["w_symmetric"], out.report["a_symmetric"]) == (w_sym, a_sym)
    # the setting is part of the search's identity: a state of the asymmetric search is refused
    with pytest.raises(QditError, match="differ"):
        search_groups(
            tiny_dit, toy_features(), method="full", num_samples=2, fitness=FIT,
            evolution=EvolutionConfig(population=3, top_k=2, generations=1), state_path=tmp_path / "s.json",
            resume=True, model_name="tiny",
        )  # fmt: skip


def test_a_resumed_search_keeps_the_kernel_it_started_with(tiny_dit, tmp_path):
    """Without a kernel given, a search runs on integer kernels where they apply ("auto"), and a resumed
    one goes on with what its state was made with: fake quantization for states from before the setting
    (their fingerprints have no kernel). Given explicitly, another kernel than the state's is refused."""
    import json as _json

    state = tmp_path / "s.json"
    kwargs = dict(
        method="full", num_samples=4, evolution=EvolutionConfig(population=4, top_k=2, generations=1),
        state_path=state, model_name="tiny",
    )  # fmt: skip
    fresh = search_groups(tiny_dit, toy_features(), fitness=FIT, **kwargs)
    assert fresh.report["kernel"] == "auto" and fresh.objective.describe()["kernel"] == "auto"
    old = search_groups(tiny_dit, toy_features(), fitness=replace(FIT, kernel="fake"), **kwargs)
    assert old.report["kernel"] == "fake" and "kernel" not in old.objective.describe()
    saved = _json.loads(state.read_text())
    assert "kernel" not in saved["fingerprint"]["objective"]  # as states written before the setting
    resumed = search_groups(tiny_dit, toy_features(), fitness=FIT, resume=True, **kwargs)
    assert resumed.report["kernel"] == "fake"
    assert resumed.result.best_genome == old.result.best_genome
    assert resumed.report["evaluations"] == old.report["evaluations"]
    with pytest.raises(QditError, match="ran its candidates on the 'fake' kernel: resume it without --kernel"):
        search_groups(tiny_dit, toy_features(), fitness=replace(FIT, kernel="auto"), resume=True, **kwargs)


def test_the_kernel_of_a_resumed_search_comes_from_rank_0(tmp_path, monkeypatch):
    """Under torchrun only rank 0 may see the state file: the others take its objective from rank 0."""
    import qdit.search.driver as driver
    import qdit.search.session as session
    from qdit.diffusion.distributed import DistContext

    state = tmp_path / "s.json"
    state.write_text(json.dumps({"fingerprint": {"objective": {"steps": 4}}}))  # a state from before the setting
    sent: list[object] = []

    def broadcast(obj, ctx):  # what rank 0 read from its file reaches the other ranks
        sent.append(obj)
        return {"steps": 4}

    monkeypatch.setattr(session, "broadcast", broadcast)
    rank1 = DistContext(rank=1, world_size=2)
    assert driver.search_kernel(FIT, state, True, rank1) == "fake" and sent == [None]  # rank 1 read nothing
    assert driver.search_kernel(FIT, state, True, DistContext(rank=0, world_size=2)) == "fake"
    assert sent[-1] == {"steps": 4}  # rank 0 read its file and sent what it found
    assert driver.search_kernel(replace(FIT, kernel="auto"), state, True, rank1) == "auto"  # asked for
    monkeypatch.undo()
    assert driver.search_kernel(FIT, state, False, DistContext()) == "auto"  # a fresh search
    assert driver.search_kernel(FIT, tmp_path / "none.json", True, DistContext()) == "auto"
    state.write_text(json.dumps({"fingerprint": {"objective": {"steps": 4, "kernel": "auto"}}}))
    assert driver.search_kernel(FIT, state, True, DistContext()) == "auto"  # saved on the integer kernel


def test_the_sensitivity_is_the_same_on_either_kernel(tiny_dit):
    """The sensitivity linearises each layer on fake quantization with activations unfused, whatever
    the kernel the candidates run on: given the same sample features, the two tables are equal."""
    from tests.test_search_gradient import differentiable_toy_features

    from qdit.kernels.cpu import cpu_extension
    from qdit.nn import kernel_paths

    if cpu_extension() is None:
        pytest.skip("no AMX extension on this machine")
    space = build_space(searchable_layers(tiny_dit, BASE), 4, 8)
    objs = {
        k: ModelObjective.build(tiny_dit, space, BASE, differentiable_toy_features(), replace(FIT, kernel=k),
                                model_name="tiny", with_proxy=False)  # fmt: skip
        for k in ("fake", "auto")
    }
    g = space.uniform(64)
    known = objs["fake"].fitness(g, 4).features
    tables = {k: o.sensitivity(g, 4, known).table for k, o in objs.items()}
    assert tables["auto"] == tables["fake"]
    assert "amx" in kernel_paths(objs["auto"].model).values()  # back on the kernel afterwards
