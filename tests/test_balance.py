"""Activation-weight channel balancing (SmoothQuant, PTQ4DiT-style CSB): the float function is kept, it
lowers W8A8 per-tensor static error on outlier channels, it survives save/load, bad options fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

import qdit
from conftest import TINY
from qdit.calib import CalibConfig
from qdit.nn import FloatWeight, QuantLinear, quant_layers
from qdit.quant.balance import csb_factors, csb_weights, smooth_factors, spearman
from qdit.quant.stats import LayerStats
from qdit.recipe import QuantSpec, Recipe, RecipeError
from quant_helpers import dit_inputs, one_thread, ref_fake_quant, run_qdit, tiny_dit  # noqa: F401  (autouse)

BALANCES = [dict(balance="smoothquant"), dict(balance="smoothquant", smooth_alpha=0.8), dict(balance="csb")]


def outlier_layer(seed: int = 0) -> tuple[nn.Linear, list[torch.Tensor]]:
    """A 64 -> 32 linear and 6 calibration "timesteps" of inputs where 4 channels are 50x larger
    (their size drifting from step to step), as in a DiT's block linears."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(64, 32)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(32, 64, generator=g) * 0.1)
        lin.bias.copy_(torch.randn(32, generator=g) * 0.1)
    steps = []
    for t in range(6):
        x = torch.randn(16, 64, generator=g)
        x[:, [3, 17, 40, 58]] *= 50.0 * (1 + 0.2 * t)
        steps.append(x)
    return lin, steps


def calibrated(steps: list[torch.Tensor]) -> LayerStats:
    stats = LayerStats(steps[0].shape[-1])
    for x in steps:
        stats.update(x)
    return stats


@pytest.mark.parametrize("fields", BALANCES, ids=lambda f: "-".join(str(v) for v in f.values()))
def test_balancing_keeps_the_float_function(fields: dict) -> None:
    lin, steps = outlier_layer()
    x = torch.cat(steps)
    prepared = FloatWeight.prepare(lin, QuantSpec(8, None, 0, 0, **fields), calibrated(steps))
    s = prepared.smooth
    assert s is not None and s.shape == (64,) and not torch.allclose(s, torch.ones(64))
    want = F.linear(x, lin.weight, lin.bias)
    got = F.linear(x / s, prepared.weight, lin.bias)  # the balanced pair, unquantized
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(prepared.weight / s, lin.weight.detach(), rtol=1e-6, atol=1e-6)


def reference_w8a8_static(lin: nn.Linear, x: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
    """W8A8 written out independently: the weight ``W * s`` RTN per output row, the activations ``x / s``
    with one static range over the whole (calibration) tensor, both asymmetric (``ref_fake_quant``)."""
    w = lin.weight.detach().float()
    if s is not None:
        w, x = w * s, x / s
    w_hat, _ = ref_fake_quant(w.numpy(), 8, 0, False)
    x_hat, _ = ref_fake_quant(x.reshape(1, -1).numpy(), 8, 0, False)
    return torch.from_numpy(x_hat.reshape(x.shape) @ w_hat.T) + lin.bias.detach()


def test_balancing_lowers_w8a8_static_error_on_outlier_channels() -> None:
    lin, steps = outlier_layer()
    stats = calibrated(steps)
    x = torch.cat(steps)
    want = F.linear(x, lin.weight, lin.bias).detach()

    def err(y: torch.Tensor) -> float:
        return float((y - want).pow(2).mean() / want.pow(2).mean())

    # the claim itself, on independent code: factors and quantizers written out here
    act_max, w_max = x.abs().amax(0), lin.weight.detach().abs().amax(0)
    ref_plain = err(reference_w8a8_static(lin, x, None))
    ref_sq = err(reference_w8a8_static(lin, x, (act_max.sqrt() / w_max.sqrt())))
    assert ref_sq < 0.5 * ref_plain
    # the library's layers: the same errors as the reference, and balancing lowers them as much
    spec = QuantSpec(8, 8, 0, 0, "static")
    plain = QuantLinear.from_linear(lin, spec, stats)
    with torch.no_grad():
        got_plain = err(plain(x))
    assert got_plain == pytest.approx(ref_plain, rel=0.05)
    for fields in BALANCES:
        layer = QuantLinear.from_linear(lin, QuantSpec(8, 8, 0, 0, "static", **fields), stats)
        with torch.no_grad():
            got = err(layer(x))
        assert got < 0.5 * got_plain, (fields, got, got_plain)
        assert got == pytest.approx(err(reference_w8a8_static(lin, x, layer.smooth)), rel=0.05)


def test_spearman_matches_scipy_with_ties() -> None:
    g = torch.Generator().manual_seed(3)
    a = torch.randint(0, 6, (5, 40), generator=g).float()
    b = torch.randint(0, 9, (40,), generator=g).float()
    got = spearman(a, b)
    want = [spearmanr(a[i].numpy(), b.numpy()).statistic for i in range(5)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    assert spearman(torch.ones(1, 4), b[:4]).item() == 0.0  # constant: no correlation, not NaN


def test_csb_weighs_timesteps_by_spearman() -> None:
    w_max = torch.tensor([1.0, 2.0, 3.0, 4.0])
    aligned = torch.tensor([10.0, 20.0, 30.0, 40.0])  # same ranking as the weight: rho 1, weight 0
    opposed = torch.tensor([40.0, 30.0, 20.0, 10.0])  # rho -1
    eta = csb_weights(torch.stack([aligned, opposed]), w_max)
    torch.testing.assert_close(eta, torch.tensor([0.0, 1.0]))
    s = csb_factors(torch.stack([aligned, opposed]), w_max)
    torch.testing.assert_close(s, (opposed / w_max).sqrt())
    # one step: plain channel-wise salience balancing, SmoothQuant with alpha 0.5
    torch.testing.assert_close(csb_factors(opposed[None], w_max), smooth_factors(opposed, w_max, 0.5))
    # every step aligned: uniform weights instead of 0 / 0
    torch.testing.assert_close(
        csb_weights(torch.stack([aligned, 2 * aligned]), w_max), torch.tensor([0.5, 0.5])
    )


def test_layer_stats_keep_per_step_maxima(tmp_path: Path) -> None:
    _, steps = outlier_layer()
    stats = calibrated(steps)
    want = torch.stack([x.abs().amax(0) for x in steps])
    assert torch.equal(stats.step_absmax, want)
    again = LayerStats.from_state(stats.state())
    assert torch.equal(again.step_absmax, want)
    old = {k: v for k, v in stats.state().items() if k != "step_absmax"}  # saved before they were kept
    assert torch.equal(LayerStats.from_state(old).step_absmax, stats.absmax[None])


def test_spec_balance_options_and_old_recipes() -> None:
    assert QuantSpec(balance="none").balance is None
    assert QuantSpec(balance="smoothquant").smooth_alpha == 0.5
    old = QuantSpec.from_dict({"smooth_alpha": 0.3})  # a recipe written before `balance` existed
    assert old.balance == "smoothquant" and old.needs_calibration and "balance" not in old.to_dict()
    assert old == QuantSpec(balance="smoothquant", smooth_alpha=0.3)
    csb = QuantSpec(4, 8, 0, 0, "static", balance="csb")
    assert csb.needs_calibration and csb.label() == "W4A8 g0/0 static rtn csb"
    assert QuantSpec.from_dict(csb.to_dict()) == csb and csb.to_dict()["balance"] == "csb"
    assert Recipe.baseline("ptq4dit").default == csb
    recipe = Recipe(csb, overrides={"blocks.0.*": QuantSpec(4, 8, 0, 0, "static", smooth_alpha=0.5)})
    assert recipe.spec_for("blocks.0.attn.qkv").balance == "smoothquant"
    assert Recipe.from_json(recipe.to_json()) == recipe
    with pytest.raises(
        RecipeError, match="balance must be one of none, smoothquant, csb.*did you mean 'csb'"
    ):
        QuantSpec(balance="cbs")
    with pytest.raises(RecipeError, match="csb' takes no smooth_alpha"):
        QuantSpec(balance="csb", smooth_alpha=0.5)


def test_override_balance_and_alpha_change_together() -> None:
    sq = QuantSpec(4, 8, 0, 0, "static", smooth_alpha=0.3)
    # an old recipe turning SmoothQuant off for a layer ({"smooth_alpha": null}) still does
    recipe = Recipe(
        sq, overrides={"a": {"smooth_alpha": None}, "b": {"balance": "none"}, "c": {"balance": "csb"}}
    )
    assert recipe.spec_for("a").balance is None and recipe.spec_for("a").smooth_alpha is None
    assert recipe.spec_for("b").balance is None and recipe.spec_for("b").smooth_alpha is None
    assert recipe.spec_for("c").balance == "csb" and recipe.spec_for("c").smooth_alpha is None
    assert Recipe.from_json(recipe.to_json()).spec_for("a") == recipe.spec_for("a")
    # from csb, an alpha means SmoothQuant with it; from smoothquant, balance smoothquant keeps the alpha
    csb = Recipe(QuantSpec(balance="csb"), overrides={"a": {"smooth_alpha": 0.7}, "b": {"w_bits": 8}})
    assert csb.spec_for("a") == QuantSpec(balance="smoothquant", smooth_alpha=0.7)
    assert csb.spec_for("b").balance == "csb"
    assert Recipe(sq, overrides={"a": {"balance": "smoothquant"}}).spec_for("a").smooth_alpha == 0.3
    # the exact name wins over a pattern, for the pair as for any field
    later = Recipe(sq, overrides={"blocks.*": {"smooth_alpha": 0.9}, "blocks.0": {"balance": "none"}})
    assert later.spec_for("blocks.0").balance is None and later.spec_for("blocks.1").smooth_alpha == 0.9


@pytest.mark.parametrize("balance", ["smoothquant", "csb"])
def test_balanced_model_save_load_round_trip(tmp_path: Path, balance: str) -> None:
    recipe = Recipe(QuantSpec(8, 8, 0, 0, "static", balance=balance))
    model = qdit.quantize(
        tiny_dit(), recipe, CalibConfig(num_samples=2, steps=3, batch_size=4), kernel="fake"
    )
    layers = quant_layers(model)
    assert all(
        layer.smooth is not None and not torch.equal(layer.smooth, torch.ones_like(layer.smooth))
        for layer in layers.values()
    )
    inputs = dit_inputs(2)
    with torch.no_grad():
        want = model(*inputs)
    qdit.save(model, tmp_path / "q")
    meta = json.loads((tmp_path / "q" / "qdit.json").read_text())
    assert meta["recipe"] == recipe.to_dict()
    loaded = qdit.load(tmp_path / "q", kernel="fake")
    for name, layer in quant_layers(loaded).items():
        assert layer.spec.balance == balance and torch.equal(layer.smooth, layers[name].smooth)
    with torch.no_grad():
        assert torch.equal(loaded(*inputs), want)
        fast = qdit.load(tmp_path / "q")  # integer kernels: x / s before quantizing, as fake does
        torch.testing.assert_close(fast(*inputs), want, rtol=1e-3, atol=1e-3)


def test_cli_balance_flag(tmp_path: Path) -> None:
    ckpt = tmp_path / "tiny.pt"
    torch.save(tiny_dit().state_dict(), ckpt)
    arch = json.dumps(TINY.to_dict())
    common = ["--model", str(ckpt), "--arch", arch, "--calib-samples", "2", "--calib-steps", "2"]
    res = run_qdit(
        "quantize",
        *common,
        "--baseline",
        "smoothquant",
        "--balance",
        "csb",
        "--out",
        str(tmp_path / "q"),
        "--json",
        str(tmp_path / "s.json"),
    )
    assert res.returncode == 0, res.stderr
    spec = json.loads((tmp_path / "s.json").read_text())["recipe"]["default"]
    assert spec["balance"] == "csb" and spec["smooth_alpha"] is None and spec["act_granularity"] == "static"
    for bad, message in [
        (["--balance", "smoothquan"], "--balance must be one of none, smoothquant, csb"),
        (["--balance", "csb", "--smooth-alpha", "0.3"], "--smooth-alpha applies to --balance smoothquant"),
        (["--balance-alpha", "1.5"], "smooth_alpha must be a number in [0, 1]"),
    ]:
        res = run_qdit("quantize", *common, *bad, "--out", str(tmp_path / "bad"))
        lines = res.stderr.strip().splitlines()
        assert res.returncode != 0 and len(lines) == 1 and message in lines[0], res.stderr
        assert not (tmp_path / "bad").exists()
