"""The search's weight bank (qdit.search.bank): switching variants equals quantizing directly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qdit.errors import QditError
from qdit.nn import QuantLinear
from qdit.recipe import QuantSpec
from qdit.search.bank import BankedQuantLinear


def batch(seed: int = 0, b: int = 4, t: int = 10, c: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, c, generator=g) * torch.linspace(0.1, 5, c)


def linear(c_in: int = 64, c_out: int = 48, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(c_in, c_out)


def test_group_bank_switching_equals_direct_quantization() -> None:
    lin = linear()
    x = batch()
    spec = QuantSpec(4, 8, 32, 32)
    layer = BankedQuantLinear.build(lin, spec, None, "layer", groups=[0, 16, 32, 64, 48])  # 48: skipped
    assert sorted(g for _, g in layer.bank) == [0, 16, 32, 64]
    layer.precompute()
    for g in (16, 64, 0, 32):
        layer.set_group(g)
        direct = QuantLinear.from_linear(lin, QuantSpec(4, 8, g, g))
        assert layer.spec.w_group == g and layer.spec.a_group == g
        assert layer.weight_scale.shape == direct.weight_scale.shape
        assert torch.equal(layer(x), direct(x))
    layer.set_act_group(16)
    assert layer.spec.w_group == 32 and layer.act_quant is not None and layer.act_quant.group == 16
    with pytest.raises(QditError, match="no precomputed weight"):
        layer.set_weight_group(8)
    with pytest.raises(QditError, match="does not divide"):
        layer.set_act_group(48)
    plain = BankedQuantLinear.build(lin, spec, None, "plain")
    with pytest.raises(QditError, match="no precomputed weight"):
        plain.set_weight_group(16)
    plain.set_act_group(16)  # activation groups switch without a bank
    with pytest.raises(QditError, match="not frozen to a kernel"):
        plain.set_kernel("torch")
    # a switch to the banked weight and back reuses the cached dequantized weights
    w = layer.dequantized_weight()
    layer.set_group(16)
    layer.set_group(32)
    assert layer.dequantized_weight() is w




def test_integer_variants_run_as_the_deployed_layer_and_follow_a_new_weight() -> None:
    """``run_integer``: every variant runs on the AMX kernel exactly as a plain layer quantized to that
    variant and put on it; a variant's layout is prepared once; a new weight drops its stale layout;
    ``run_integer(False)`` is fake quantization again."""
    from qdit.kernels.cpu import cpu_extension

    if cpu_extension() is None:
        pytest.skip("no AMX extension on this machine")
    lin, x = linear(), batch()
    layer = BankedQuantLinear.build(lin, QuantSpec(4, 8, 32, 32), None, "layer", groups=[0, 16, 32, 64])
    layer.precompute()
    layer.run_integer()
    seen = {}
    for g in (16, 64, 0, 32, 16):
        layer.set_group(g)
        direct = QuantLinear.from_linear(lin, QuantSpec(4, 8, g, g))
        fake = direct(x)
        direct.set_kernel("amx")
        assert layer.kernel == "amx"
        assert torch.equal(layer(x), direct(x))
        assert not torch.equal(layer(x), fake)  # the kernel's roundings, not fake quantization's
        assert seen.setdefault(g, layer._kw) is layer._kw  # prepared once per variant
    other = QuantLinear.from_linear(linear(seed=1), QuantSpec(4, 8, 16, 16))
    with torch.no_grad():
        other.bias.copy_(layer.bias)
    layer.set_qweight(other.qweight)  # the same variant's key, other values
    layer.set_act_group(16)
    other.set_kernel("amx")
    assert layer.kernel == "amx" and layer._kw is not seen[16]
    assert torch.equal(layer(x), other(x))
    layer.set_group(32)
    layer.set_group(16)  # back to the key: the new weight, not the one banked before it
    assert torch.equal(layer(x), other(x))
    # a switch prepares only the layout it runs (weight group = activation group), none for the old
    # activation group on the way
    assert all(weight_key[1] == a_group for weight_key, a_group, _ in layer._kws)
    third = QuantLinear.from_linear(linear(seed=2), QuantSpec(4, 8, 16, 16))
    layer.load_state_dict(third.state_dict())  # new values for the active variant: its layout redone
    third.set_kernel("amx")
    assert layer.kernel == "amx" and torch.equal(layer(x), third(x))
    layer.run_integer(False)
    assert layer.kernel == "fake" and layer._kw is None
    third.set_kernel("fake")
    assert torch.equal(layer(x), third(x))


def test_freeze_leaves_banked_layers_on_fake_quantization() -> None:
    import qdit
    from qdit.nn import freeze, kernel_summary
    from qdit.search.bank import bank_factory
    from quant_helpers import tiny_dit

    model = qdit.quantize(tiny_dit(), QuantSpec(4, 8, 32, 32), layer_factory=bank_factory([16, 32]))
    assert set(freeze(model, "auto").values()) == {"fake"}
    assert "weight bank" in kernel_summary(model)
    with pytest.raises(QditError, match="cannot run an integer kernel: a search layer with a weight bank"):
        freeze(model, "int")


def test_bank_cache_follows_a_new_weight_and_keeps_scales_exact() -> None:
    lin, x = linear(), batch()
    layer = BankedQuantLinear.build(lin, QuantSpec(4, 8, 32, 32), None, "layer", groups=[16, 32])
    layer.precompute()
    other = QuantLinear.from_linear(linear(seed=1), QuantSpec(4, 8, 32, 32))
    with torch.no_grad():
        other.bias.copy_(layer.bias)
    layer.set_qweight(other.qweight)  # same (bits, group) as a banked variant, different values
    torch.testing.assert_close(layer(x), other(x), rtol=0, atol=0)
    scales = {k: q.scale.clone() for k, q in layer.bank.items()}
    layer.to(torch.bfloat16)
    assert all(torch.equal(layer.bank[k].scale, v) for k, v in scales.items())
