"""The CPU integer paths against the exact reference (the compiled AMX path only where it is built)."""

from __future__ import annotations

import pytest
import torch

from qdit.kernels.formats import IntWeight, quantize_acts
from qdit.kernels.linear import ActQuant, available_paths, int_linear, prepare_weight
from qdit.kernels.reference import int_linear_reference
from qdit.quant.activation import activation_range
from qdit.quant.primitives import fake_quantize_range
from qdit.quant.weight import quantize_weight

CASES = [  # w_bits, w_symmetric, a_symmetric, a_group, w_group, granularity, K, N
    (4, False, False, 128, 128, "token", 512, 96),
    (8, True, True, 64, 128, "sample", 512, 100),
    (4, True, False, 0, 0, "token", 256, 64),
    (6, False, True, 32, 256, "token", 512, 32),
    (8, False, False, 96, 96, "token", 288, 40),
]


@pytest.mark.parametrize("path", available_paths())
@pytest.mark.parametrize("case", CASES)
def test_int_linear_matches_reference_and_fake_quant(path: str, case: tuple) -> None:
    wb, ws, asym, ag, wg, gran, k, n = case
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 35, k, generator=g) * torch.rand(k, generator=g) * 3
    w = torch.randn(n, k, generator=g)
    bias = torch.randn(n, generator=g)
    qw = quantize_weight(w, wb, wg, ws)
    iw = IntWeight.from_qweight(qw)
    ref = int_linear_reference(quantize_acts(x, 8, ag, asym, gran), iw, bias)
    kw = prepare_weight(iw, ag, path)
    y = int_linear(x, kw, ActQuant(8, ag, asym, gran), bias).reshape(-1, n)
    scale = ref.abs().max()
    assert (y - ref).abs().max() <= 3e-6 * scale
    # the fake-quant reference: dequantized activations and weights through a float matmul
    xg, lo, hi = activation_range(x, ag, gran)
    xf = fake_quantize_range(xg, lo, hi, 8, asym).reshape(-1, k)
    fake = torch.nn.functional.linear(xf.double(), qw.dequantize().double(), bias.double()).float()
    assert (y - fake).abs().max() <= 3e-6 * scale
    # the prepared form gives the same integer weights back (one copy held, nothing lost)
    assert torch.equal(kw.int_weight().codes(), iw.codes())
    # a wrong zero point is caught by the same tolerance
    bad = IntWeight(iw.data, iw.scale, None if iw.zero is None else iw.zero + 1, wb, k)
    if iw.zero is not None:
        wrong = int_linear(x, prepare_weight(bad, ag, path), ActQuant(8, ag, asym, gran), bias).reshape(-1, n)
        assert (wrong - ref).abs().max() > 1e-3 * scale
