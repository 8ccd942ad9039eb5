"""Quantization primitives at their edges: non-finite values, float32 extremes, fp16 scales, bad shapes
(property-based tests of the same primitives: test_properties.py)."""

from __future__ import annotations

import math

import pytest
import torch

from qdit.quant import fake_quantize, gptq_quantize, qparams, quantize_weight
from qdit.quant.finite import NonFiniteError, check_finite, check_finite_number
from qdit.quant.primitives import ScaleRangeWarning
from quant_helpers import one_thread  # noqa: F401  (autouse fixture)

FMAX = torch.finfo(torch.float32).max


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_float32_extremes_do_not_overflow(bits: int, symmetric: bool) -> None:
    x = torch.tensor([[3e38, -3e38, 1.0, 2.0], [FMAX, 0.0, -1.0, 5.0], [-FMAX, FMAX, 0.0, 1e38]])
    out = fake_quantize(x, bits, symmetric=symmetric)
    assert torch.isfinite(out).all()
    span = torch.tensor([6e38, FMAX, 2 * FMAX], dtype=torch.float64)  # each row's range
    step = span / (2**bits - 1 if not symmetric else 2 ** (bits - 1) - 1)
    err = (out.double() - x.double()).abs().amax(1)
    assert (err <= step * 0.5 * (1 + 1e-5) + 1e32).all()


def test_non_finite_values_are_defined_element_by_element() -> None:
    inf, nan = float("inf"), float("nan")
    x = torch.tensor([[inf, 1.0, 2.0, nan, -inf, -0.5, 0.25, 3.0]])
    out = fake_quantize(x, 4)
    finite = torch.tensor([[0.0, 1.0, 2.0, 0.0, 0.0, -0.5, 0.25, 3.0]])  # range from the finite values
    ref = fake_quantize(finite, 4)
    keep = torch.isfinite(x)
    assert torch.equal(out[keep], ref[keep])  # the finite values are unaffected by the bad ones
    assert torch.isnan(out[0, 3])  # NaN stays NaN (and only there)
    assert out[0, 0] == ref.max() and out[0, 4] == ref.min()  # +-Inf saturate to the extreme levels
    assert torch.isnan(out).sum() == 1
    # groups: a bad value only affects its own element
    y = torch.randn(3, 64)
    y_bad = y.clone()
    y_bad[1, 5] = nan
    a, b = fake_quantize(y, 4, 16), fake_quantize(y_bad, 4, 16)
    same = torch.ones_like(y, dtype=torch.bool)
    same[1, :16] = False  # the group's range may shrink, nothing else moves
    assert torch.equal(a[same], b[same]) and torch.isnan(b).sum() == 1


def test_nan_range_never_becomes_a_plausible_scale() -> None:
    scale, _ = qparams(torch.tensor([float("nan"), 0.0]), torch.tensor([1.0, 0.0]), 4)
    assert torch.isnan(scale[0]) and scale[1] == 1.0


def test_nan_weights_are_refused_before_quantization() -> None:
    w = torch.randn(8, 32)
    w[3, 7] = float("nan")
    with pytest.raises(
        NonFiniteError,
        match=r"weight \[8, 32\] has 1 non-finite value \(NaN\) of 256, the first at index \[3, 7\]",
    ):
        quantize_weight(w, 4, 16)
    w[3, 7] = float("inf")
    with pytest.raises(NonFiniteError, match=r"\(Inf\)"):
        gptq_quantize(w, torch.eye(32), 4, 16)


def test_fp16_scales_warn_when_they_underflow_or_overflow() -> None:
    with pytest.warns(ScaleRangeWarning, match="1 with a range too small .* of 2 groups for float16"):
        out = quantize_weight(torch.tensor([[1e-8, 2e-8], [0.5, -1.0]]), 4, scale_dtype=torch.float16)
    assert torch.equal(out.dequantize()[0], torch.zeros(2))  # what the warning says happened
    with pytest.warns(ScaleRangeWarning, match="1 with a range too large .*clipped"):
        fake_quantize(torch.tensor([[1e6, 1.0]]), 4, scale_dtype=torch.float16)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ordinary weights: no warning
        quantize_weight(torch.randn(4, 64), 4, 32, scale_dtype=torch.float16)


def test_bad_shapes_and_group_sizes_are_value_errors() -> None:
    assert fake_quantize(torch.zeros(4, 0), 4).shape == (4, 0)  # nothing to quantize: a valid input
    with pytest.raises(ValueError, match="group size must be an integer >= 0"):
        fake_quantize(torch.zeros(4, 64), 4, 32.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="group size must be an integer >= 0"):
        fake_quantize(torch.zeros(4, 64), 4, True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="group size must be an integer >= 0"):
        fake_quantize(torch.zeros(4, 0), 4, -2)
    with pytest.raises(ValueError, match="0-d tensor"):
        fake_quantize(torch.tensor(1.0), 4)
    with pytest.raises(ValueError, match="does not divide the width 64"):
        fake_quantize(torch.zeros(4, 64), 4, 48)
    with pytest.raises(ValueError, match="bits must be an integer"):
        fake_quantize(torch.zeros(4, 64), 9)


def test_check_finite_helpers() -> None:
    assert check_finite(torch.arange(3), "ints") is not None  # integers are always finite
    with pytest.raises(NonFiniteError, match="x has 2 non-finite values \\(NaN/Inf\\) of 3"):
        check_finite(torch.tensor([float("nan"), 1.0, float("-inf")]), "x")
    assert check_finite_number(1.5, "--cfg") == 1.5
    for bad in ("nan", "inf", "-inf"):
        with pytest.raises(NonFiniteError, match="--cfg must be a finite number"):
            check_finite_number(float(bad), "--cfg")


def test_non_finite_check_is_cheap_for_meta_tensors() -> None:
    t = torch.empty(3, device="meta")
    assert check_finite(t, "meta") is t
    assert math.isfinite(check_finite_number("2", "n"))
