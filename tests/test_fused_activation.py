"""An activation moved into the quantized linear that feeds it (``qdit.nn.fuse``): DiT's MLP
GELU runs inside fc1 on every path, and the model computes what it computed before."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import qdit
from qdit.kernels.linear import available_paths
from qdit.models.dit import Mlp
from qdit.models.embedded import load_embedded
from qdit.nn import FusedActivation, fuse, kernel_summary, quant_layers, unfuse
from qdit.recipe import QuantSpec, Recipe


def _inputs(cfg, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    return x, torch.randint(0, 1000, (batch,), generator=g), torch.randint(0, cfg.num_classes, (batch,), generator=g)


def test_quantize_fuses_the_mlp_gelu_and_changes_nothing_on_the_fake_path() -> None:
    model = qdit.quantize(load_embedded(), QuantSpec(8, 8, 128, 128), kernel="fake")
    mlps = [m for m in model.modules() if isinstance(m, Mlp)]
    assert mlps and all(isinstance(m.act, FusedActivation) and m.fc1.activation == "gelu_tanh" for m in mlps)
    assert all(m.fc2.activation is None for m in mlps)
    assert f"gelu_tanh fused into {len(mlps)} layers" in kernel_summary(model)
    assert "activation=gelu_tanh" in repr(mlps[0].fc1) and "gelu_tanh, fused into" in repr(mlps[0].act)
    x, t, y = _inputs(model.config)
    with torch.inference_mode():
        fused = model(x, t, y)
        assert len(unfuse(model)) == len(mlps)
        assert all(type(m.act) is nn.GELU and m.act.approximate == "tanh" and m.fc1.activation is None for m in mlps)
        plain = model(x, t, y)
    assert torch.equal(fused, plain)  # the same float operations in the same order


@pytest.mark.skipif("amx" not in available_paths(), reason="the AMX kernels are not built here")
def test_fused_gelu_on_the_amx_path_matches_the_unfused_model(tmp_path: Path) -> None:
    model = qdit.quantize(load_embedded(), QuantSpec(8, 8, 128, 128), kernel="fake")
    qdit.save(model, tmp_path / "q")
    fast = qdit.load(tmp_path / "q", kernel="int").to(torch.bfloat16)
    fc1s = [m.fc1 for m in fast.modules() if isinstance(m, Mlp)]
    assert all(f.activation == "gelu_tanh" and f.kernel == "amx" for f in fc1s)  # loading fuses too
    x, t, y = _inputs(model.config, 8)
    x = x.bfloat16()
    with torch.inference_mode():
        fused = fast(x, t, y).double()
        unfuse(fast)
        plain = fast(x, t, y).double()
    # one bfloat16 rounding fewer per fc1 output: the two runs differ as bf16 runs of the same model do
    rel = float((fused - plain).abs().max() / plain.abs().max())
    assert 0 < rel <= 0.05, rel


def test_only_quantized_linears_and_tanh_gelu_are_fused() -> None:
    model = load_embedded()
    qdit.quantize(model, Recipe(default=QuantSpec(8, 8, 128, 128), exclude=["blocks.0.mlp.fc1"]), kernel="fake")
    assert isinstance(model.blocks[0].mlp.act, nn.GELU)  # its fc1 stayed float
    assert isinstance(model.blocks[1].mlp.act, FusedActivation)
    exact = nn.Sequential(nn.Linear(4, 4), nn.GELU())  # erf GELU: no fused form
    assert fuse(exact, [("0", "1")]) == []
    layers = quant_layers(model)
    assert sum(1 for q in layers.values() if q.activation) == len(model.blocks) - 1


def _spy_kwargs(monkeypatch: pytest.MonkeyPatch, layer: nn.Module, key: str) -> list[bool]:
    """Whether each call of ``layer`` got ``key`` (recorded by wrapping the class's forward: a hook on
    the layer would itself turn fusion off)."""
    from qdit.nn.quant_linear import QuantLinear

    seen: list[bool] = []
    forward = QuantLinear.forward

    def spy(self, *args, **kwargs):
        if self is layer:
            seen.append(kwargs.get(key) is not None)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(QuantLinear, "forward", spy)
    return seen


def _plain_gated(linear: nn.Module, h: torch.Tensor, residual, gate) -> torch.Tensor:
    out = linear(h)
    return out if residual is None else residual + gate.unsqueeze(1) * out


@pytest.mark.parametrize("kernel", ["fake", *(["int"] if "amx" in available_paths() else [])])
def test_the_gated_residual_inside_proj_and_fc2(kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """DiT blocks hand ``x + gate * branch`` to the quantized proj and fc2 on an integer kernel (within
    bf16 rounding of the block's own expression); on the fake path (calibration, the search's probes) the
    block computes it, so every hook sees the layer's product alone."""
    import qdit.models.dit as dit

    model = qdit.quantize(load_embedded(), QuantSpec(8, 8, 128, 128), kernel=kernel).to(torch.bfloat16)
    proj = model.blocks[0].attn.proj
    seen = _spy_kwargs(monkeypatch, proj, "residual")
    x, t, y = _inputs(model.config, 8)
    x = x.bfloat16()
    with torch.inference_mode():
        fused = model(x, t, y).double()
        assert seen == [kernel != "fake"]
        monkeypatch.setattr(dit, "gated_linear", _plain_gated)
        plain = model(x, t, y).double()
    if kernel == "fake":
        assert torch.equal(fused, plain)
    else:
        rel = float((fused - plain).abs().max() / plain.abs().max())
        assert 0 < rel <= 0.05, rel


def _plain_ada(linear: nn.Module, h) -> torch.Tensor:
    return linear(h if isinstance(h, torch.Tensor) else h.value())


@pytest.mark.parametrize("kernel", ["fake", *(["int"] if "amx" in available_paths() else [])])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_adaln_input_inside_qkv_and_fc1(kernel: str, dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """DiT blocks hand qkv and fc1 their input before the norm and modulation on an integer kernel
    (``ada_norm``), which the kernel applies as it quantizes; the model computes what the block's own
    ``modulate(norm(x))`` gives (float32: within a code step of rare activations; bf16: within bf16
    rounding). On the fake path (calibration, the search's probes) every hook sees the modulated input."""
    import qdit.models.dit as dit

    model = qdit.quantize(load_embedded(), QuantSpec(8, 8, 128, 128), kernel=kernel).to(dtype)
    seen = _spy_kwargs(monkeypatch, model.blocks[0].mlp.fc1, "ada_norm")
    x, t, y = _inputs(model.config, 8)
    x = x.to(dtype)
    with torch.inference_mode():
        fused = model(x, t, y).double()
        assert seen == [kernel != "fake"]
        monkeypatch.setattr(dit, "ada_linear", _plain_ada)
        plain = model(x, t, y).double()
        unfuse(model)
        assert not model.blocks[0].attn.qkv.takes_ada_norm()
    if kernel == "fake":
        assert torch.equal(fused, plain)
    else:
        rel = float((fused - plain).abs().max() / plain.abs().max())
        assert rel <= (0.05 if dtype == torch.bfloat16 else 0.01), rel


@pytest.mark.skipif("amx" not in available_paths(), reason="the AMX kernels are not built here")
def test_hooks_see_plain_inputs_and_outputs_and_gradients_reach_the_modulation(monkeypatch) -> None:
    """A layer watched by a forward hook gets nothing fused (the hook sees the modulated input and the
    product alone, as on the fake path), and neither does one whose shift, scale or gate needs a
    gradient (the integer path has none): the gradient of the block's output with respect to the
    modulation is the unfused model's."""
    model = qdit.quantize(load_embedded(), QuantSpec(8, 8, 128, 128), kernel="int")
    block = model.blocks[0]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, model.config.num_patches, model.config.hidden_size, generator=g)
    c = torch.randn(2, model.config.hidden_size, generator=g)
    qkv, proj = block.attn.qkv, block.attn.proj
    assert qkv.takes_ada_norm() and proj.takes_gated_residual()
    inputs, outputs = [], []
    h1 = qkv.register_forward_hook(lambda m, a, o: inputs.append(a[0]) and None)
    h2 = proj.register_forward_hook(lambda m, a, o: outputs.append(o) and None)
    assert not qkv.takes_ada_norm() and not proj.takes_gated_residual()
    with torch.inference_mode():
        block(x, c)
    h1.remove()
    h2.remove()
    shift, scale = block.adaLN_modulation(c).chunk(6, dim=1)[:2]
    want_in = torch.nn.functional.layer_norm(x, (x.shape[-1],), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    assert torch.allclose(inputs[0], want_in, atol=1e-5)
    assert outputs[0].shape == x.shape and not torch.allclose(outputs[0], x, atol=1e-2)  # the product, no residual
    assert qkv.takes_ada_norm()  # hooks gone, fusion back
    # gradients with respect to the conditioning (shift, scale, gate need them; x does not)
    cg = c.clone().requires_grad_(True)
    block(x, cg).square().mean().backward()
    fused_grad = cg.grad.clone()
    unfuse(model)
    cg.grad = None
    block(x, cg).square().mean().backward()
    assert torch.allclose(fused_grad, cg.grad, rtol=1e-4, atol=1e-7)
    assert fused_grad.abs().max() > 0


def test_an_ada_norm_given_to_a_fake_layer_is_applied_first() -> None:
    from qdit.kernels.linear import AdaNorm

    model = qdit.quantize(load_embedded(), QuantSpec(8, 8, 128, 128), kernel="fake")
    layer = model.blocks[0].attn.qkv
    g = torch.Generator().manual_seed(2)
    k = layer.in_features
    x = torch.randn(2, 5, k, generator=g)
    ada = AdaNorm(torch.randn(2, k, generator=g), torch.randn(2, k, generator=g), 1e-6)
    with torch.inference_mode():
        want = layer(torch.nn.functional.layer_norm(x, (k,), eps=1e-6) * (1 + ada.scale[:, None]) + ada.shift[:, None])
        assert torch.equal(layer(x, ada_norm=ada), want)
        assert not torch.equal(layer(x), want)


@pytest.mark.skipif("amx" not in available_paths(), reason="the AMX kernels are not built here")
def test_autocast_keeps_the_residual_stream_in_float32() -> None:
    """Under bf16 autocast a block's input (the residual stream) stays float32 and its branches are bf16:
    the fused residual keeps the block's float32 output, as ``x + gate * out`` does."""
    model = qdit.quantize(load_embedded(), QuantSpec(8, 8, 128, 128), kernel="int")
    block = model.blocks[0]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, model.config.num_patches, model.config.hidden_size, generator=g)
    c = torch.randn(4, model.config.hidden_size, generator=g)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        fused = block(x, c)
        unfuse(model)
        plain = block(x, c)
    assert fused.dtype == plain.dtype == torch.float32
    rel = float((fused - plain).abs().max() / plain.abs().max())
    assert rel <= 0.01, rel


def test_unfuse_works_on_a_submodule_and_fuse_restores_everything() -> None:
    model = qdit.quantize(load_embedded(), QuantSpec(8, 8, 128, 128), kernel="fake")
    block = model.blocks[1]
    assert unfuse(block) == ["blocks.1.mlp.fc1"]  # named as fuse named it, from the whole model
    assert type(block.mlp.act) is nn.GELU and block.mlp.fc1.activation is None
    assert not block.attn.proj.fusion and model.blocks[0].attn.proj.fusion
    assert isinstance(model.blocks[0].mlp.act, FusedActivation)  # the other blocks untouched
    wrapped = nn.Sequential(model)
    assert len(unfuse(wrapped)) == len(model.blocks) - 1
    from qdit.models.adapter import get_adapter

    assert len(fuse(model, get_adapter(model).activation_pairs(model))) == len(model.blocks)
    assert all(q.fusion for q in quant_layers(model).values())


def test_a_gate_per_sample_is_checked() -> None:
    from qdit.kernels.linear import gated_residual

    y = torch.randn(2, 8, 16)
    with pytest.raises(ValueError, match=r"gate must be \[2, 16\] \(one row per sample\), got \(4, 16\)"):
        gated_residual(y, y, torch.randn(4, 16))
