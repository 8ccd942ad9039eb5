from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import qdit
from qdit.calib import CalibConfig, calibrate, capture
from qdit.errors import QditError
from qdit.models.adapter import DiTAdapter, ModelAdapter, get_adapter
from qdit.nn import QuantLinear, kernel_paths, kernel_summary, quant_layers
from qdit.quant import gptq_quantize, quantize_weight
from qdit.recipe import QuantSpec, Recipe
from quant_helpers import dit_inputs, one_thread, tiny_dit  # noqa: F401  (one_thread: autouse fixture)

CALIB = CalibConfig(num_samples=3, steps=3, batch_size=8, max_rows=512)
BLOCK_LINEARS = [f"blocks.{i}.{n}" for i in range(2) for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]


def per_layer_recipe(method: str) -> tuple[Recipe, dict[str, int], dict[str, int]]:
    """A different weight and activation group size for every block linear and adaLN linear, by exact name."""
    choices = {64: [16, 32, 64, 0], 256: [32, 64, 128, 256]}
    names = BLOCK_LINEARS + [f"blocks.{i}.adaLN_modulation.1" for i in range(2)]
    w_groups, a_groups = {}, {}
    for k, n in enumerate(names):
        options = choices[256 if n.endswith("fc2") else 64]
        w_groups[n], a_groups[n] = options[k % 4], options[(k + 1) % 4]
    overrides = {n: {"w_group": w_groups[n], "a_group": a_groups[n]} for n in names}
    spec = QuantSpec(w_bits=4, a_bits=8, w_group=32, a_group=32, weight_method=method)
    return Recipe(spec, overrides=overrides, include=["adaln"]), w_groups, a_groups


def test_adapter_layers() -> None:
    model = tiny_dit()
    adapter = get_adapter(model)
    assert isinstance(adapter, DiTAdapter)
    groups = adapter.layer_groups(model)
    assert groups["default"] == BLOCK_LINEARS
    assert groups["adaln"] == ["blocks.0.adaLN_modulation.1", "blocks.1.adaLN_modulation.1"]
    assert "final_layer.linear" in groups["all"] and "t_embedder.mlp.0" in groups["all"]
    generic = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    assert type(get_adapter(generic)) is ModelAdapter
    qdit.quantize(generic, QuantSpec(4, 8, 8, 8))
    assert [type(m).__name__ for m in generic] == ["QuantLinear", "ReLU", "QuantLinear"]
    assert generic(torch.randn(2, 8)).shape == (2, 4)
    with pytest.raises(QditError, match="cannot save"):
        qdit.save(generic, "/nonexistent/never-written")


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_per_layer_recipe_reaches_every_layer(method: str) -> None:
    model = tiny_dit()
    recipe, w_groups, a_groups = per_layer_recipe(method)
    qdit.quantize(model, recipe, CALIB)
    layers = quant_layers(model)
    assert sorted(layers) == sorted(w_groups)
    for name, layer in layers.items():
        g = w_groups[name]
        assert layer.spec.w_group == g and layer.spec.weight_method == method
        assert layer.weight_scale.shape == (layer.out_features, layer.in_features // (g or layer.in_features))
        assert layer.act_quant is not None and layer.act_quant.group == a_groups[name]
    assert isinstance(model.final_layer.linear, nn.Linear)  # not selected: left in float
    if method == "gptq":  # GPTQ really ran with each layer's own group size (its codes differ from RTN's)
        fresh = tiny_dit()
        for name, layer in layers.items():
            rtn = quantize_weight(fresh.get_submodule(name).weight, 4, w_groups[name])
            assert rtn.scale.shape == layer.weight_scale.shape and not torch.equal(
                rtn.codes, layer.qweight.codes
            )
    out = model(*dit_inputs())
    assert torch.isfinite(out).all()
    with pytest.raises(QditError, match="already quantized"):
        qdit.quantize(model, recipe)


def test_calibration_uses_hooks_not_patched_forward() -> None:
    model = tiny_dit()
    names = BLOCK_LINEARS[:3]
    seen: list[bool] = []

    def run() -> None:
        for m in model.modules():
            assert "forward" not in vars(m)  # nothing patched on any instance
            assert type(m).forward is m.forward.__func__
        seen.append(all(len(model.get_submodule(n)._forward_pre_hooks) == 1 for n in names))
        model(*dit_inputs(2))
        model(*dit_inputs(4, seed=1))

    calib = capture(model, names, run, hessian_layers=names[:1], max_rows=40)
    assert seen == [True]
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    s = calib[names[0]]
    assert s.rows_seen == 6 * 16 and s.rows is not None and s.rows.shape == (40, 64)
    assert s.hessian is not None and s.hessian.shape == (64, 64) and calib[names[1]].hessian is None
    # min/max and Hessian over all rows of both calls
    x_all = []
    hook = model.get_submodule(names[0]).register_forward_pre_hook(
        lambda m, a: x_all.append(a[0].reshape(-1, 64))
    )
    model(*dit_inputs(2))
    model(*dit_inputs(4, seed=1))
    hook.remove()
    x = torch.cat(x_all)
    assert torch.equal(s.ch_min, x.amin(0)) and torch.equal(s.ch_max, x.amax(0))
    torch.testing.assert_close(s.hessian, (x.T.double() @ x.double()) / x.shape[0], rtol=1e-5, atol=1e-6)
    # the rows sample is made of real input rows
    assert all(bool((x == r).all(1).any()) for r in s.rows[:5])


def test_calibrate_over_sampling_trajectories(tmp_path: Path) -> None:
    model = tiny_dit()
    forward_before = type(model).forward
    calib = calibrate(model, BLOCK_LINEARS, CALIB, hessian_layers=["blocks.0.mlp.fc2"])
    assert type(model).forward is forward_before and "forward" not in vars(model)
    # 3 samples x 2 (guidance) x 3 steps x 16 tokens
    assert all(calib[n].rows_seen == 3 * 2 * 3 * 16 for n in BLOCK_LINEARS)
    calib.save(tmp_path / "calib.pt")
    again = type(calib).load(tmp_path / "calib.pt")
    assert torch.equal(again["blocks.0.mlp.fc2"].hessian, calib["blocks.0.mlp.fc2"].hessian)
    assert again.meta["num_samples"] == 3


def test_gptq_lowers_layer_error_on_dit_activations() -> None:
    model = tiny_dit()
    calib = calibrate(model, BLOCK_LINEARS[:4], CALIB, hessian_layers=BLOCK_LINEARS[:4])
    for name in BLOCK_LINEARS[:4]:
        w = model.get_submodule(name).weight.detach()
        stats = calib[name]
        x = stats.rows
        assert x is not None and stats.hessian is not None
        for group in (0, 32):
            rtn = quantize_weight(w, 3, group).dequantize()
            gptq = gptq_quantize(w, stats.hessian, 3, group).dequantize()
            e_rtn = (x @ (w - rtn).T).pow(2).mean()
            e_gptq = (x @ (w - gptq).T).pow(2).mean()
            assert e_gptq < e_rtn, (name, group, float(e_gptq), float(e_rtn))


def test_group_bank_on_a_model_matches_direct_quantization() -> None:
    spec = QuantSpec(4, 8, 32, 32)
    from qdit.search.bank import bank_factory, set_groups

    banked = qdit.quantize(tiny_dit(), spec, layer_factory=bank_factory([16, 32, 64]))
    genome = {n: [16, 32, 64][k % 3] for k, n in enumerate(BLOCK_LINEARS)}
    set_groups(banked, genome)
    direct = qdit.quantize(tiny_dit(), Recipe(spec).with_groups(genome))
    inputs = dit_inputs()
    assert torch.equal(banked(*inputs), direct(*inputs))
    with pytest.raises(QditError, match="no precomputed weight for group 8"):
        set_groups(banked, {"blocks.0.attn.qkv": 8})
    with pytest.raises(QditError, match="not a quantized layer"):
        set_groups(banked, {"final_layer.linear": 16})
    assert all(type(m) is QuantLinear for m in quant_layers(direct).values())  # no bank outside the search


def mixed_recipe() -> Recipe:
    return Recipe(
        QuantSpec(w_bits=4, a_bits=8, w_group=32, a_group=32),
        overrides={
            "blocks.0.attn.qkv": {"weight_method": "gptq", "w_bits": 3},
            "blocks.0.mlp.fc2": {"act_granularity": "static", "a_group": 0, "w_group": 0},
            "blocks.1.attn.proj": {"smooth_alpha": 0.5, "act_granularity": "sample", "w_symmetric": True},
            "blocks.1.mlp.fc1": {"a_bits": None, "weight_method": "mse", "w_bits": 6},
            "blocks.1.mlp.fc2": {"w_bits": 5, "a_symmetric": True, "w_group": 64},
        },
        include=["adaln"],
    )


def test_save_load_round_trip_is_exact(tmp_path: Path) -> None:
    model = qdit.quantize(tiny_dit(), mixed_recipe(), CALIB, kernel="fake")
    inputs = dit_inputs(4)
    with torch.no_grad():
        want = model(*inputs)
    report = qdit.save(model, tmp_path / "q")
    assert report["quantized_layers"] == 10
    meta = json.loads((tmp_path / "q" / "qdit.json").read_text())
    assert meta["model"]["arch"] == "dit" and meta["model"]["config"]["hidden_size"] == 64
    assert meta["recipe"] == mixed_recipe().to_dict() and meta["qdit_version"]
    assert meta["layers"]["blocks.0.attn.qkv"]["spec"]["w_bits"] == 3
    loaded = qdit.load(tmp_path / "q", kernel="fake")
    assert type(loaded).__name__ == "DiT" and not loaded.training
    for name, layer in quant_layers(loaded).items():
        assert "weight" not in dict(layer.named_parameters())  # no float weights for quantized layers
        assert layer.spec == quant_layers(model)[name].spec
    with torch.no_grad():
        got = loaded(*inputs)
    assert torch.equal(got, want)
    assert loaded.qdit_recipe == mixed_recipe()
    # the default: integer kernels wherever the spec allows, the same outputs up to float rounding
    fast = qdit.load(tmp_path / "q")
    paths = kernel_paths(fast)
    assert paths["blocks.1.mlp.fc1"] == "fake"  # weight-only: float activations
    assert {p for n, p in paths.items() if n != "blocks.1.mlp.fc1"} <= {"amx", "torch"}
    assert "fake: weight-only" in kernel_summary(fast)
    with torch.no_grad():
        got = fast(*inputs)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    with pytest.raises(QditError, match="blocks.1.mlp.fc1 cannot run an integer kernel: weight-only"):
        qdit.load(tmp_path / "q", kernel="int")
    # saving again (from the integer layout) over a qdit folder replaces it atomically, codes unchanged
    qdit.save(fast, tmp_path / "q")
    assert torch.equal(qdit.load(tmp_path / "q", kernel="fake")(*inputs), want)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]  # no temporary folders left


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_packed_size_is_bits_over_16_of_bf16(tmp_path: Path, bits: int) -> None:
    model = qdit.quantize(tiny_dit(), QuantSpec(bits, 8, 0, 0))
    report = qdit.save(model, tmp_path / "q")
    ratio = report["quantized_weight_bytes"] / report["quantized_weight_bf16_bytes"]
    # codes at bits/16 plus one fp16 scale and one packed zero per row (widths 64 and 256)
    assert bits / 16 <= ratio <= bits / 16 * 1.1
    from safetensors import safe_open

    with safe_open(str(tmp_path / "q" / "model.safetensors"), "pt") as f:
        packed = f.get_tensor("blocks.0.mlp.fc2.weight_packed")
    assert packed.dtype == torch.uint8 and packed.numel() == 64 * 256 * bits // 8


def test_corrupt_or_missing_checkpoint_gives_clear_error(tmp_path: Path) -> None:
    model = qdit.quantize(tiny_dit(), QuantSpec(4, 8, 32, 32))
    qdit.save(model, tmp_path / "q")
    with pytest.raises(QditError, match="not found"):
        qdit.load(tmp_path / "missing")
    weights = tmp_path / "q" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(QditError, match="model.safetensors is corrupt: its sha256 does not match"):
        qdit.load(tmp_path / "q")
    with pytest.raises(QditError, match="model.safetensors is corrupt or unreadable"):
        qdit.load(tmp_path / "q", verify=False)
    weights.unlink()
    with pytest.raises(QditError, match="model.safetensors is missing"):
        qdit.load(tmp_path / "q")
    meta = tmp_path / "q" / "qdit.json"
    meta.write_text("{not json")
    with pytest.raises(QditError, match="qdit.json is corrupt"):
        qdit.load(tmp_path / "q")
    meta.unlink()
    with pytest.raises(QditError, match="qdit.json is missing"):
        qdit.load(tmp_path / "q")
    # a missing tensor is named
    qdit.save(model, tmp_path / "r")
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tmp_path / "r" / "model.safetensors"))
    del tensors["blocks.1.mlp.fc1.weight_scale"]
    save_file(tensors, str(tmp_path / "r" / "model.safetensors"))
    with pytest.raises(QditError, match="model.safetensors is corrupt"):
        qdit.load(tmp_path / "r")
    with pytest.raises(QditError, match="missing tensor 'blocks.1.mlp.fc1.weight_scale'"):
        qdit.load(tmp_path / "r", verify=False)


def test_failed_save_leaves_existing_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = qdit.quantize(tiny_dit(), QuantSpec(4, 8, 32, 32))
    out = tmp_path / "q"
    qdit.save(model, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        qdit.save(model, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    monkeypatch.undo()
    with pytest.raises(QditError, match="refusing to overwrite"):
        qdit.save(model, other)
    assert (other / "keep.txt").read_text() == "mine"


def test_quantize_needs_calibration_data_for_layers() -> None:
    model = tiny_dit()
    calib = calibrate(model, BLOCK_LINEARS[:2], CALIB)
    first_two = Recipe(QuantSpec(weight_method="gptq", w_group=0, a_group=0), exclude=BLOCK_LINEARS[2:])
    with pytest.raises(QditError, match="no Hessian for 'blocks.0.attn.qkv'"):
        qdit.quantize(model, first_two, calib)
    with pytest.raises(QditError, match="has no layer 'blocks.0.mlp.fc1'"):
        qdit.quantize(model, Recipe.baseline("rtn"), calib)
    assert not quant_layers(model)  # nothing was swapped
    static = Recipe(QuantSpec(w_group=0, a_group=0, act_granularity="static"), exclude=BLOCK_LINEARS[2:])
    qdit.quantize(model, static, calib)
    assert isinstance(model.blocks[0].attn.qkv, QuantLinear) and isinstance(
        model.blocks[0].mlp.fc1, nn.Linear
    )


def test_failed_swap_leaves_the_model_unchanged() -> None:
    from qdit.nn import swap_layers

    model = tiny_dit()
    specs = {
        "blocks.0.attn.qkv": QuantSpec(4, 8, 32, 32),
        "blocks.0.mlp.fc1": QuantSpec(4, 8, 0, 0, "static"),
    }
    with pytest.raises(QditError, match="blocks.0.mlp.fc1: .* needs calibration"):
        swap_layers(model, specs)  # the second layer fails after the first was quantized
    assert not quant_layers(model)


def test_sequential_gptq_propagates_through_quantized_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    recipe = Recipe(QuantSpec(3, 8, 32, 32, weight_method="gptq"))
    seq = qdit.quantize(tiny_dit(), recipe, CALIB)
    one_pass = qdit.quantize(tiny_dit(), recipe, replace(CALIB, sequential=False))
    a, b = quant_layers(seq), quant_layers(one_pass)
    assert a["blocks.0.mlp.fc2"].name == "blocks.0.mlp.fc2"
    # block 0 sees the same (float) inputs either way; block 1 sees the quantized block 0's outputs
    for name in BLOCK_LINEARS[:4]:
        assert torch.equal(a[name].qweight.codes, b[name].qweight.codes), name
    assert not torch.equal(a["blocks.1.attn.qkv"].qweight.codes, b["blocks.1.attn.qkv"].qweight.codes)

    # a failure half-way puts every float layer back
    import qdit.quant.methods as methods

    calls = []
    real = methods.gptq_quantize

    def flaky(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 6:
            raise RuntimeError("boom")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(methods, "gptq_quantize", flaky)
    model = tiny_dit()
    with pytest.raises(RuntimeError, match="boom"):
        qdit.quantize(model, recipe, CALIB)
    assert not quant_layers(model) and len(calls) == 6
    assert not any(m._forward_pre_hooks for m in model.modules())
