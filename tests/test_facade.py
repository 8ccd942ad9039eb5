"""The package facade: ``qdit.load_model``, ``qdit.search_recipe``, ``qdit.sample``, ``qdit.evaluate`` are
thin calls of the library, and ``import qdit`` stays light."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from tests.test_eval_evaluate import FakeInception, fmnist_like
from tests.test_search_model import FIT, toy_features

import qdit
from qdit.diffusion.sampler import SamplerConfig, sample_images
from qdit.errors import QditError
from qdit.eval.evaluate import evaluate
from qdit.eval.npz import Reference, Samples
from qdit.search.driver import SearchConfig, search_groups
from qdit.search.evolution import EvolutionConfig

SMALL = dict(
    method="full", num_samples=2, fitness=FIT, evolution=EvolutionConfig(population=3, top_k=2, generations=1)
)


def test_facade_names_are_lazy() -> None:
    code = (
        "import sys, qdit; names = dir(qdit); "
        "assert {'load_model', 'quantize', 'search_recipe', 'sample', 'evaluate', 'save', 'load', 'SearchConfig'} "
        "<= set(names), names; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert qdit.load_model is __import__("qdit.api").api.load_model


def test_sample_is_sample_images(tiny_dit) -> None:
    config = SamplerConfig(steps=2, clip_denoised=True)
    images, labels = qdit.sample(tiny_dit, 3, seed=5, config=config, batch_size=2)
    ref_images, ref_labels = sample_images(tiny_dit, 3, 5, config, batch_size=2)
    assert images.dtype == np.uint8 and np.array_equal(images, ref_images)
    assert np.array_equal(labels, ref_labels)


def test_evaluate_takes_arrays_and_is_eval_evaluate() -> None:
    ref = Reference(name="r", source="r", images=fmnist_like(20, 0))
    images = fmnist_like(20, 1)
    got = qdit.evaluate(images, ref, ["fid"], inception=FakeInception())
    assert got == evaluate(Samples(images, None), ref, ["fid"], inception=FakeInception(), progress=False)


def test_search_recipe_returns_the_drivers_recipe_and_report(tiny_dit, tmp_path) -> None:
    recipe, report = qdit.search_recipe(tiny_dit, toy_features(), model_name="tiny", **SMALL)
    out = search_groups(tiny_dit, toy_features(), SearchConfig(**SMALL), model_name="tiny")
    assert isinstance(recipe, qdit.Recipe) and recipe.to_dict() == out.recipe.to_dict()
    assert report["best_genome"] == out.report["best_genome"] and report["recipe"] == recipe.to_dict()
    with pytest.raises(QditError, match="not both"):
        search_groups(tiny_dit, toy_features(), SearchConfig(**SMALL), method="cheap")
    with pytest.raises(QditError, match="unknown search method"):
        SearchConfig(method="grid")
    with pytest.raises(QditError, match="need a reference"):
        qdit.search_recipe(tiny_dit, "inception", **SMALL)
    with pytest.raises(QditError, match="inception_mode is for Inception features; these are domain"):
        qdit.search_recipe(tiny_dit, "domain", inception_mode="fp32", **SMALL)


def test_search_recipe_passes_the_inception_mode(tiny_dit, monkeypatch: pytest.MonkeyPatch) -> None:
    import qdit.eval.features as features
    import qdit.search.driver as driver

    asked: list[object] = []
    monkeypatch.setattr(features, "feature_space", lambda kind, ref, **kw: asked.append((kind, ref, kw)))
    monkeypatch.setattr(driver, "search_groups", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("stop")))
    for mode in ("fp32", None):
        with pytest.raises(RuntimeError, match="stop"):
            qdit.search_recipe(tiny_dit, "inception", reference="r.npz", inception_mode=mode, **SMALL)
    assert [kw["inception_mode"] for _, _, kw in asked] == ["fp32", None]  # None: the feature space's default


def test_sample_and_eval_commands_call_the_facade(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``qdit sample`` and ``qdit eval`` parse their flags and call ``qdit.api.sample`` / ``qdit.api.evaluate``."""
    from qdit.cli import main

    calls: dict[str, tuple] = {}

    def fake_sample(model, num, seed=0, config=None, **options):
        calls["sample"] = (num, seed, config, options)
        return np.zeros((num, 28, 28, 1), np.uint8), np.arange(num, dtype=np.int64) % 10

    def fake_evaluate(samples, reference, metrics=None, **options):
        calls["evaluate"] = (samples, reference, metrics, options)
        return {name: 1.0 for name in metrics}

    monkeypatch.setattr("qdit.api.sample", fake_sample)
    monkeypatch.setattr("qdit.api.evaluate", fake_evaluate)
    out = tmp_path / "s.npz"
    argv = ["sample", "-n", "3", "--steps", "2", "--seed", "4", "--cfg", "2", "--classes", "1,2", "--out", str(out)]
    assert main([*argv, "--batch-size", "2", "--precision", "bf16"]) == 0
    num, seed, config, options = calls["sample"]
    assert (num, seed) == (3, 4) and (config.steps, config.cfg_scale, config.clip_denoised) == (2, 2.0, True)
    assert options["labels"].tolist() == [1, 2, 1] and options["batch_size"] == 2
    assert options["precision"] == "bf16" and options["dist"] is not None
    assert main(["eval", str(out), "--ref", str(out), "--metrics", "fid", "--no-progress"]) == 0
    samples, reference, metrics, options = calls["evaluate"]
    assert isinstance(samples, Samples) and isinstance(reference, Reference) and metrics == ["fid"]
    assert options["batch_size"] == 50 and options["progress"] is False
