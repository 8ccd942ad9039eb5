"""Property-based tests (hypothesis; skipped where it is not installed): quantization primitives over the
whole float32 range, bit packing round trips, recipe JSON round trips and parsing of arbitrary JSON."""

from __future__ import annotations

import pytest
import torch

from qdit.quant import fake_quantize, pack_bits, quantize_weight, unpack_bits
from qdit.quant.primitives import code_range
from quant_helpers import one_thread  # noqa: F401  (autouse fixture)

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FAST = settings(max_examples=60, deadline=None)
finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)  # up to +-3.4e38


@FAST
@given(
    rows=st.integers(1, 4),
    groups=st.integers(1, 4),
    group=st.sampled_from([1, 2, 3, 8]),
    bits=st.integers(2, 8),
    symmetric=st.booleans(),
    data=st.data(),
)
def test_fake_quantize_error_is_at_most_half_a_step(rows, groups, group, bits, symmetric, data) -> None:
    values = data.draw(st.lists(finite32, min_size=rows * groups * group, max_size=rows * groups * group))
    x = torch.tensor(values, dtype=torch.float32).reshape(rows, groups * group)
    out = fake_quantize(x, bits, group, symmetric)
    assert out.shape == x.shape and torch.isfinite(out).all()
    xg = x.double().reshape(rows, groups, group)
    lo = xg.amin(-1, keepdim=True).clamp(max=0)
    hi = xg.amax(-1, keepdim=True).clamp(min=0)
    qlo, qhi = code_range(bits, symmetric)
    step = (torch.maximum(lo.abs(), hi) / qhi) if symmetric else (hi - lo) / (qhi - qlo)
    err = (out.double().reshape(rows, groups, group) - xg).abs()
    # half a step (symmetric: a whole step at the clipped negative end), plus float32 rounding
    bound = step * (1.0 if symmetric else 0.5) + xg.abs() * 1e-6 + 1e-30
    assert (err <= bound * (1 + 1e-4)).all()
    assert torch.equal(fake_quantize(out, bits, group, symmetric), fake_quantize(out, bits, group, symmetric))


@FAST
@given(bits=st.integers(2, 8), data=st.data())
def test_pack_unpack_round_trip(bits: int, data) -> None:
    codes = data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=0, max_size=200))
    t = torch.tensor(codes, dtype=torch.uint8)
    packed = pack_bits(t, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == (len(codes) * bits + 7) // 8
    assert torch.equal(unpack_bits(packed, bits, len(codes)).to(torch.uint8), t)


@FAST
@given(
    out=st.integers(1, 6),
    groups=st.integers(1, 3),
    group=st.sampled_from([4, 8]),
    bits=st.integers(2, 8),
    symmetric=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_quantized_weights_dequantize_as_fake_quantize(out, groups, group, bits, symmetric, seed) -> None:
    w = torch.randn(out, groups * group, generator=torch.Generator().manual_seed(seed))
    q = quantize_weight(w, bits, group, symmetric, scale_dtype=torch.float32)
    assert torch.equal(q.dequantize(), fake_quantize(w, bits, group, symmetric))
    codes = q.codes
    assert int(codes.min()) >= 0 and int(codes.max()) < 2**bits


spec_fields = st.fixed_dictionaries(
    {},
    optional={
        "w_bits": st.integers(2, 8),
        "a_bits": st.one_of(st.none(), st.integers(2, 8)),
        "w_group": st.sampled_from([0, 16, 32, 64, 128]),
        "a_group": st.sampled_from([0, 16, 32, 64, 128]),
        "act_granularity": st.sampled_from(["token", "sample", "static"]),
        "weight_method": st.sampled_from(["rtn", "mse", "gptq"]),
        "w_symmetric": st.booleans(),
        "smooth_alpha": st.one_of(st.none(), st.floats(0, 1)),
    },
)
any_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=5)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@FAST
@given(
    default=spec_fields,
    overrides=st.dictionaries(
        st.sampled_from(["blocks.0.attn.qkv", "adaln", "mlp"]), spec_fields, max_size=3
    ),
)
def test_recipe_json_round_trip(default, overrides) -> None:
    from qdit.recipe import QuantSpec, Recipe

    recipe = Recipe(QuantSpec(**default), overrides=overrides)
    again = Recipe.from_json(recipe.to_json())
    assert again == recipe and again.to_dict() == recipe.to_dict()


@FAST
@given(data=any_json)
def test_recipe_parsing_never_crashes(data) -> None:
    import json

    from qdit.errors import QditError
    from qdit.recipe import Recipe

    for candidate in (data, {"version": 1, "default": data}, {"version": 1, "overrides": {"x": data}}):
        try:
            Recipe.from_json(json.dumps(candidate))
        except QditError as exc:
            assert "\n" not in str(exc)
