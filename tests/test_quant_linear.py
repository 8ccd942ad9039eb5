from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qdit.calib import LayerStats
from qdit.errors import QditError
from qdit.kernels.linear import available_paths
from qdit.nn import ActQuantizer, QuantLinear
from qdit.quant import fake_quantize
from qdit.quant.rules import Static
from qdit.recipe import QuantSpec
from quant_helpers import one_thread, ref_fake_quant, ref_quant_group  # noqa: F401  (one_thread: autouse fixture)


def batch(seed: int = 0, b: int = 4, t: int = 10, c: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, c, generator=g)
    return x * torch.arange(1, b + 1).view(b, 1, 1) * torch.linspace(0.1, 5, c)  # samples differ in scale


def linear(c_in: int = 64, c_out: int = 48, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(c_in, c_out)


@pytest.mark.parametrize("granularity", ["token", "sample"])
@pytest.mark.parametrize("group", [0, 16, 32])
def test_dynamic_activation_quant_is_batch_invariant(granularity: str, group: int) -> None:
    x = batch()
    aq = ActQuantizer(64, 8, group, granularity)
    together = aq(x)
    alone = torch.cat([aq(x[i : i + 1]) for i in range(x.shape[0])])
    assert torch.equal(together, alone)
    layer = QuantLinear.from_linear(linear(), QuantSpec(4, 8, 16, group, granularity))
    out = layer(x)
    one_by_one = torch.cat([layer(x[i : i + 1]) for i in range(x.shape[0])])
    torch.testing.assert_close(out, one_by_one, rtol=0, atol=1e-6)


def test_token_and_sample_granularity_match_reference() -> None:
    x = batch(1)
    b, t, c = x.shape
    tok = ActQuantizer(c, 6, 16, "token")(x)
    want, _ = ref_fake_quant(x.reshape(-1, c).numpy(), 6, 16, False)
    np.testing.assert_array_equal(tok.reshape(-1, c).numpy(), want)
    smp = ActQuantizer(c, 6, 16, "sample")(x)
    for i in range(b):
        for j in range(c // 16):
            block = x[i, :, 16 * j : 16 * (j + 1)]
            ref, _ = ref_fake_quant(block.reshape(1, -1).numpy(), 6, 0, False)  # one range over T x 16
            np.testing.assert_array_equal(smp[i, :, 16 * j : 16 * (j + 1)].numpy(), ref.reshape(t, 16))
    assert not torch.equal(tok, smp)


def test_static_activation_ranges() -> None:
    x = batch(2)
    stats = LayerStats(64)
    stats.update(x)
    for group in (0, 16):
        layer = QuantLinear.from_linear(linear(), QuantSpec(8, 8, 0, group, "static"), stats)
        aq = layer.act_quant
        assert aq is not None and aq.granularity == Static()  # kept as the value
        # reference: calibrated min/max per group (per tensor for group 0), widened to contain 0
        g = group or 64
        xs = x.reshape(-1, 64)
        new = batch(3)[:1] * 0.5
        got = aq(new).reshape(-1, 64)
        for j in range(64 // g):
            sl = slice(g * j, g * (j + 1))
            lo = np.float32(min(xs[:, sl].min().item(), 0.0))
            hi = np.float32(max(xs[:, sl].max().item(), 0.0))
            want, _ = ref_quant_group(new.reshape(-1, 64)[:, sl].numpy(), lo, hi, 8, False)
            np.testing.assert_array_equal(got[:, sl].numpy(), want)
    with pytest.raises(QditError, match="calibration"):
        QuantLinear.from_linear(linear(), QuantSpec(8, 8, 0, 0, "static"))


def test_weights_stored_quantized_never_as_float() -> None:
    lin = linear()
    layer = QuantLinear.from_linear(lin, QuantSpec(4, None, 16, 0))
    names = dict(layer.named_parameters())
    assert set(names) == {"bias"}  # no float weight parameter
    assert layer.weight_codes.dtype == torch.uint8 and layer.weight_codes.shape == (48, 32)  # two per byte
    assert layer.qweight.codes.shape == (48, 64) and layer.qweight.codes.max() <= 15
    assert layer.weight_scale.shape == (48, 4)
    floats = [t for t in [*layer.parameters(), *layer.buffers()] if t.is_floating_point()]
    assert sum(t.numel() for t in floats) == 48 + 48 * 4  # bias and scales only
    assert layer.weight_nbytes() == 48 * 32 + 48 * 4 * 2 + 48 * 4
    want = fake_quantize(lin.weight.detach(), 4, 16, scale_dtype=torch.float16)
    assert torch.equal(layer.weight, want)
    x = batch()
    torch.testing.assert_close(layer(x), nn.functional.linear(x, want, lin.bias), rtol=0, atol=0)
    assert layer(x.bfloat16()).dtype == torch.bfloat16
    layer.to(torch.float64)
    assert layer.weight.dtype == torch.float64 and layer(x.double()).dtype == torch.float64


def test_symmetric_and_no_bias() -> None:
    lin = nn.Linear(64, 8, bias=False)
    layer = QuantLinear.from_linear(lin, QuantSpec(3, 8, 32, 32, w_symmetric=True, a_symmetric=True))
    assert layer.weight_zero is None and layer.bias is None
    assert torch.equal(layer.weight, fake_quantize(lin.weight.detach(), 3, 32, True, torch.float16))
    assert layer(batch()).shape == (4, 10, 8)


def test_smoothquant_folding() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 50, 64, generator=g)
    x[..., 5] *= 60.0  # an outlier channel, as in DiT activations
    lin = linear()
    stats = LayerStats(64)
    stats.update(x)
    ref = lin(x)
    # without activation quantization, smoothing is an exact re-parametrization (up to weight rounding)
    exact = QuantLinear.from_linear(lin, QuantSpec(8, None, 0, 0, smooth_alpha=0.5), stats)
    torch.testing.assert_close(exact(x), ref, rtol=0.01, atol=0.05)
    s = exact.smooth
    want = stats.absmax.pow(0.5) / lin.weight.detach().abs().amax(0).pow(0.5)
    torch.testing.assert_close(s, want)
    # with static per-tensor A8, balancing the outlier channel lowers the error
    plain = QuantLinear.from_linear(lin, QuantSpec(8, 8, 0, 0, "static"), stats)
    smooth = QuantLinear.from_linear(lin, QuantSpec(8, 8, 0, 0, "static", smooth_alpha=0.5), stats)
    err = lambda m: (m(x) - ref).pow(2).mean()  # noqa: E731
    assert err(smooth) < 0.5 * err(plain)


def test_width_validation_names_layer() -> None:
    with pytest.raises(QditError, match="blocks.0.attn.qkv.*48.*64"):
        QuantLinear.from_linear(linear(), QuantSpec(4, 8, 48, 48), name="blocks.0.attn.qkv")


INT_SPECS = [
    QuantSpec(8, 8, 16, 16),
    QuantSpec(4, 8, 32, 32, "sample"),
    QuantSpec(4, 8, 0, 0, w_symmetric=True, a_symmetric=True),
    QuantSpec(8, 8, 0, 16, "static", smooth_alpha=0.5),
]


@pytest.mark.parametrize("path", available_paths())
@pytest.mark.parametrize("spec", INT_SPECS, ids=lambda s: s.label())
def test_integer_kernel_matches_fake_quantization(path: str, spec: QuantSpec) -> None:
    x = batch(4)
    stats = LayerStats(64)
    stats.update(batch(5))
    layer = QuantLinear.from_linear(linear(), spec, stats)
    want = layer(x)
    codes = layer.qweight.codes.clone()
    stored = layer.weight_codes.clone()
    layer.set_kernel(path)
    assert layer.kernel == path and f"kernel={path}" in repr(layer)
    got = layer(x)
    assert got.dtype == x.dtype
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    # one copy of the weight: the AMX layout replaces the plain codes, which still come back exactly
    if path == "amx":
        assert layer.weight_codes is None
    assert torch.equal(layer.qweight.codes, codes)
    assert torch.equal(layer.state_dict()["weight_codes"], stored)
    # a gradient-carrying input takes the fake path (straight-through estimator), the same values
    xg = x.clone().requires_grad_(True)
    torch.testing.assert_close(layer(xg), want, rtol=0, atol=0)
    # loading a state dict (strict or by assignment) rebuilds the kernel's layout from the new tensors
    other = QuantLinear.from_linear(linear(seed=1), spec, stats)
    other_want = other(x)
    for assign in (False, True):
        layer.load_state_dict(other.state_dict(), strict=True, assign=assign)
        assert layer.kernel == path
        assert (layer(x) - other_want).abs().max() <= 1e-5 * other_want.abs().max()
        layer.load_state_dict(QuantLinear.from_linear(linear(), spec, stats).state_dict(), assign=assign)
        assert (layer(x) - want).abs().max() <= 1e-5 * want.abs().max()
    # a dtype change keeps the kernel and the format; bf16 in, bf16 out, quantized from the same values
    layer.to(torch.bfloat16)
    assert layer.kernel == path and layer.weight_scale.dtype == torch.float16
    ref = QuantLinear.from_linear(linear(), spec, stats).to(torch.bfloat16)
    xb = x.bfloat16()
    got_b, want_b = layer(xb).float(), ref(xb).float()
    assert layer(xb).dtype == torch.bfloat16
    assert (got_b - want_b).abs().max() <= 2e-2 * want_b.abs().max()  # bf16 outputs: 8-bit mantissas
    layer.set_kernel("fake")
    assert torch.equal(layer(xb), ref(xb))


def test_integer_kernel_refused_with_reason() -> None:
    weight_only = QuantLinear.from_linear(linear(), QuantSpec(4, None, 16, 0), name="blocks.0.fc")
    with pytest.raises(QditError, match="blocks.0.fc cannot run an integer kernel: weight-only"):
        weight_only.set_kernel("torch")
    wide = QuantLinear.from_linear(linear(), QuantSpec(4, 8, 32, 0))
    wide.set_kernel("torch")  # per-tensor activations with group-32 weights nest (block 32)
    odd = QuantLinear.from_linear(nn.Linear(96, 8), QuantSpec(4, 8, 32, 48))
    assert odd.integer_blocker() == "activation group 48 and weight group 32 do not nest"


def test_dtype_casts_keep_the_quantized_format() -> None:
    stats = LayerStats(64)
    stats.update(batch(5))
    layer = QuantLinear.from_linear(linear(), QuantSpec(8, 8, 16, 16, "static", smooth_alpha=0.5), stats)
    scale, smooth = layer.weight_scale.clone(), layer.smooth.clone()
    ranges = layer.act_quant.ch_min.clone(), layer.act_quant.ch_max.clone()
    layer.to(torch.bfloat16)
    assert layer.bias.dtype == torch.bfloat16 and layer.weight_dtype == torch.bfloat16
    assert torch.equal(layer.weight_scale, scale) and layer.weight_scale.dtype == torch.float16
    assert torch.equal(layer.smooth, smooth) and torch.equal(layer.act_quant.ch_min, ranges[0])
    assert torch.equal(layer.act_quant.ch_max, ranges[1])


def test_non_finite_weight_or_bias_named() -> None:
    lin = linear()
    with torch.no_grad():
        lin.weight[3, 5] = float("nan")
    with pytest.raises(QditError, match=r"blocks.1.mlp.fc1.weight has 1 non-finite value \(NaN\)"):
        QuantLinear.from_linear(lin, QuantSpec(4, 8, 16, 16), name="blocks.1.mlp.fc1")
    lin = linear()
    with torch.no_grad():
        lin.bias[0] = float("inf")
    with pytest.raises(QditError, match="layer.bias has 1 non-finite"):
        QuantLinear.from_linear(lin, QuantSpec(4, 8, 16, 16))
