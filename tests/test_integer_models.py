"""Whole models through the integer kernels: saved, loaded and run, they give the fake-quantization
reference's outputs (identical integer weights; only the final float scaling rounds differently)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import qdit
from qdit.commands.bench import xl_model
from qdit.kernels.linear import available_paths
from qdit.models.embedded import load_embedded
from qdit.nn import kernel_paths, quant_layers
from qdit.recipe import QuantSpec, Recipe

SPECS = {
    "W4A8 g128": QuantSpec(4, 8, 128, 128),
    "W8A8 g128 sample": QuantSpec(8, 8, 128, 128, "sample"),
    "W8A8 per-channel": QuantSpec(8, 8, 0, 0),
    "W4A8 g64 sym": QuantSpec(4, 8, 64, 64, w_symmetric=True, a_symmetric=True),
}


def inputs(cfg, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    return x, torch.randint(0, 1000, (batch,), generator=g), torch.randint(0, cfg.num_classes, (batch,), generator=g)


def check_integer_matches_fake(model: torch.nn.Module, spec: QuantSpec, tmp: Path, batch: int) -> None:
    qdit.quantize(model, Recipe(default=spec, include=["adaln"]), kernel="fake")
    qdit.save(model, tmp)
    fake = qdit.load(tmp, kernel="fake")
    fast = qdit.load(tmp, kernel="int")
    paths = set(kernel_paths(fast).values())
    assert paths <= set(available_paths()) and "fake" not in paths
    # identical integer weights in both
    for name, layer in quant_layers(fast).items():
        assert torch.equal(layer.qweight.codes, quant_layers(fake)[name].qweight.codes), name
    x, t, y = inputs(model.config, batch)
    # layer by layer, on the inputs each layer sees in the reference: equal up to float rounding
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        layer.register_forward_hook(lambda m, a, o, n=name: seen.__setitem__(n, a[0]) and None)
        for name, layer in quant_layers(fake).items()
    ]
    with torch.inference_mode():
        want = fake(x, t, y).double()
        assert torch.equal(want.float(), model(x, t, y))  # the loaded reference is the quantized model
        for h in hooks:
            h.remove()
        for name, layer in quant_layers(fast).items():
            ref = quant_layers(fake)[name](seen[name]).double()
            err = float((layer(seen[name]).double() - ref).abs().max() / ref.abs().max())
            assert err <= 1e-5, (name, err)
        got = fast(x, t, y).double()
        exact = copy.deepcopy(fake).double()(x.double(), t, y)
    # end to end, a last-bit difference can move an activation across a rounding boundary in a later
    # layer, so the outputs differ as much as the reference's own float32 and float64 runs do
    rel = float((got - want).abs().max() / want.abs().max())
    own = float((exact - want).abs().max() / want.abs().max())
    assert rel <= max(10 * own, 1e-5) and rel <= 5e-3, (rel, own)
    # a wrong weight would not pass the layer check: one code moved by half its range in the first layer
    name, layer = next(iter(quant_layers(fast).items()))
    path = layer.kernel
    qw = layer.qweight
    qw.codes[0, 0] ^= 1 << (spec.w_bits - 1)
    layer.set_qweight(qw)
    layer.set_kernel(path)
    with torch.inference_mode():
        ref = quant_layers(fake)[name](seen[name]).double()
        err = float((layer(seen[name]).double() - ref).abs().max() / ref.abs().max())
    assert err > 1e-4  # ten times the bound every correct layer meets


@pytest.mark.parametrize("name", list(SPECS))
def test_embedded_model_integer_path_matches_fake(tmp_path: Path, name: str) -> None:
    check_integer_matches_fake(load_embedded(), SPECS[name], tmp_path / "q", batch=4)


@pytest.mark.parametrize("name", ["W4A8 g128", "W8A8 per-channel"])
def test_dit_xl2_shaped_block_integer_path_matches_fake(tmp_path: Path, name: str) -> None:
    # one DiT-XL/2 block (hidden 1152, 16 heads, 256 tokens per image), random weights
    check_integer_matches_fake(xl_model(depth=1), SPECS[name], tmp_path / "q", batch=2)
