from __future__ import annotations

import numpy as np
import pytest
import torch

from qdit.quant import (
    HessianAccumulator,
    check_bits,
    dequantize,
    fake_quantize,
    gptq_quantize,
    group_view,
    minmax,
    mse_clip_range,
    pack_bits,
    pack_int32,
    qparams,
    quantize,
    quantize_weight,
    unpack_bits,
    unpack_int32,
)
from quant_helpers import one_thread, ref_fake_quant, ref_quant_group  # noqa: F401  (one_thread: autouse fixture)

WIDTH = 1152  # the DiT-XL width: divisible by every group size below (576 is not by 128)
GROUPS = [32, 64, 128, 192, 288, 0]
BITS = [2, 3, 4, 6, 8]


def make_data(rows: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, WIDTH, generator=g)
    x[1] *= torch.linspace(0.01, 30.0, WIDTH)  # channel-wise spread, like DiT activations
    x[2] = x[2].abs() + 0.5  # all positive: the range is widened to contain 0
    x[3] = 0.0  # zero range everywhere: s must fall back to 1
    x[4, :100] = 2.5  # constant groups
    x[5] = -x[5].abs()  # all negative
    return x


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", BITS)
def test_fake_quantize_equals_reference(bits: int, symmetric: bool) -> None:
    x = make_data()
    for group in GROUPS:
        want, want_codes = ref_fake_quant(x.numpy(), bits, group, symmetric)
        got = fake_quantize(x, bits, group, symmetric)
        assert got.dtype == torch.float32
        np.testing.assert_array_equal(got.numpy(), want, err_msg=f"bits={bits} group={group}")
        # the pieces: qparams, quantize, dequantize
        xg = group_view(x, group)
        s, z = qparams(*minmax(xg), bits, symmetric)
        assert bool((s > 0).all())
        q = quantize(xg, s, z, bits, symmetric)
        np.testing.assert_array_equal(q.reshape(x.shape).numpy(), want_codes)
        np.testing.assert_array_equal(dequantize(q, s, z).reshape(x.shape).numpy(), want)


def test_code_ranges_and_zero_range() -> None:
    x = make_data()
    for bits in BITS:
        q = quantize(group_view(x, 64), *qparams(*minmax(group_view(x, 64)), bits), bits)
        assert q.min() >= 0 and q.max() <= 2**bits - 1
        qs = quantize(group_view(x, 64), *qparams(*minmax(group_view(x, 64)), bits, True), bits, True)
        assert qs.min() >= -(2 ** (bits - 1)) and qs.max() <= 2 ** (bits - 1) - 1
    # zero rows come back exactly zero; 0 is exact in every group
    assert torch.equal(fake_quantize(x, 4, 64)[3], torch.zeros(WIDTH))
    y = torch.tensor([[0.0, 0.3, -1.7, 2.2]])
    assert fake_quantize(y, 3, 0)[0, 0] == 0
    # bf16 in, bf16 out
    assert fake_quantize(x.bfloat16(), 4, 32).dtype == torch.bfloat16


@pytest.mark.parametrize("bits", [1, 9, 0, 4.0, True])
def test_bits_out_of_range(bits: object) -> None:
    with pytest.raises(ValueError, match="2..8"):
        check_bits(bits)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        fake_quantize(torch.randn(2, 64), bits, 32)  # type: ignore[arg-type]


def test_group_must_divide() -> None:
    with pytest.raises(ValueError, match="does not divide"):
        fake_quantize(torch.randn(2, 100), 4, 32)


def test_mse_clip_search_matches_reference() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 256, generator=g)
    w[0, 3] = 12.0  # an outlier makes clipping worthwhile
    for symmetric in (False, True):
        xg = group_view(w, 64)
        lo, hi = mse_clip_range(xg, 3, symmetric)
        got = quantize_weight(w, 3, 64, symmetric, "mse", torch.float32).dequantize()
        # reference: try every shrink factor, keep the lowest L_2.4 error per group (first wins ties)
        base = w.numpy().astype(np.float32)
        for r in range(4):
            for j in range(4):
                v = base[r, 64 * j : 64 * (j + 1)]
                mn, mx = np.float32(min(v.min(), 0)), np.float32(max(v.max(), 0))
                best, best_f = np.inf, None
                for i in range(100):
                    f = np.float32(1.0 - i * 0.001)
                    xh = ref_quant_group(v, mn * f, mx * f, 3, symmetric)[0]
                    err = float((np.abs(xh - v).astype(np.float64) ** 2.4).sum())
                    if err < best:
                        best, best_f = err, f
                assert lo[r, j, 0].item() == pytest.approx(mn * best_f, rel=1e-6, abs=1e-12)
                assert hi[r, j, 0].item() == pytest.approx(mx * best_f, rel=1e-6, abs=1e-12)
        rtn = quantize_weight(w, 3, 64, symmetric, "rtn", torch.float32).dequantize()
        err = lambda a: (a - w).abs().pow(2.4).sum()  # noqa: E731
        assert err(got) <= err(rtn)
        assert err(got) < err(rtn) or symmetric  # the outlier group gains from clipping


@pytest.mark.parametrize("group", [0, 32, 192])
def test_quantize_weight_matches_fake_quantize(group: int) -> None:
    w = make_data()
    for symmetric in (False, True):
        qw = quantize_weight(w, 4, group, symmetric, scale_dtype=torch.float32)
        assert qw.codes.dtype == torch.uint8 and (qw.zero is None) == symmetric
        assert qw.scale.shape == (w.shape[0], WIDTH // (group or WIDTH))
        assert torch.equal(qw.dequantize(), fake_quantize(w, 4, group, symmetric))
        # stored fp16 scales: the codes are computed with the rounded scale, so nothing is lost twice
        q16 = quantize_weight(w, 4, group, symmetric)
        assert q16.scale.dtype == torch.float16
        assert torch.equal(q16.dequantize(), fake_quantize(w, 4, group, symmetric, torch.float16))


@pytest.mark.parametrize("group", [0, 32, 64, 96, 192, 288])
def test_gptq_identity_hessian_equals_rtn(group: int) -> None:
    w = make_data(seed=3)[:, :WIDTH]
    w[3] = torch.randn(WIDTH)  # no all-zero row
    for symmetric in (False, True):
        got = gptq_quantize(w, torch.eye(WIDTH), 3, group, symmetric)
        want = quantize_weight(w, 3, group, symmetric)
        assert torch.equal(got.codes, want.codes)
        assert torch.equal(got.scale, want.scale)
        assert (got.zero is None and want.zero is None) or torch.equal(got.zero, want.zero)


def test_gptq_lowers_output_error_on_correlated_inputs() -> None:
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(128, 128, generator=g) / 8
    x = torch.randn(4096, 128, generator=g) @ mix + torch.randn(4096, 128, generator=g) * 0.1
    w = torch.randn(64, 128, generator=g) * 0.05
    acc = HessianAccumulator(128)
    for chunk in x.split(1000):
        acc.add(chunk)
    for group in (0, 32):
        rtn = quantize_weight(w, 3, group).dequantize()
        gptq = gptq_quantize(w, acc.hessian, 3, group).dequantize()
        e_rtn = (x @ (w - rtn).T).pow(2).mean()
        e_gptq = (x @ (w - gptq).T).pow(2).mean()
        assert e_gptq < 0.7 * e_rtn


def test_gptq_dead_columns_and_bad_shapes() -> None:
    w = torch.randn(8, 64)
    h = torch.eye(64)
    h[5, 5] = 0.0  # a channel that never fired
    q = gptq_quantize(w, h, 4, 32)
    assert torch.isfinite(q.dequantize()).all()
    with pytest.raises(ValueError, match="Hessian shape"):
        gptq_quantize(w, torch.eye(32), 4, 32)


@pytest.mark.parametrize("bits", range(2, 9))
def test_pack_roundtrip(bits: int) -> None:
    g = torch.Generator().manual_seed(bits)
    for shape in [(7, 13), (4, 64), (1,), (0,)]:
        codes = torch.randint(0, 2**bits, shape, generator=g, dtype=torch.int64).to(torch.uint8)
        packed = pack_bits(codes, bits)
        assert packed.dtype == torch.uint8 and packed.numel() == (codes.numel() * bits + 7) // 8
        assert torch.equal(unpack_bits(packed, bits, codes.numel()).reshape(shape), codes)
        words = pack_int32(codes, bits)
        assert words.dtype == torch.int32
        assert torch.equal(unpack_int32(words, bits, codes.numel()).reshape(shape), codes)
    with pytest.raises(ValueError, match="out of range"):
        pack_bits(torch.tensor([2**bits]), bits)


def test_pack_layout_lsb_first() -> None:
    assert pack_bits(torch.tensor([1, 2, 3, 15]), 4).tolist() == [0x21, 0xF3]
    assert pack_bits(torch.tensor([1, 2, 3, 0]), 2).tolist() == [0b00111001]
    # 3-bit: 0b101, 0b011, 0b111 -> stream bits 1,0,1, 1,1,0, 1,1,1 -> bytes 0b11011101, 0b00000001
    assert pack_bits(torch.tensor([5, 3, 7]), 3).tolist() == [0b11011101, 0b1]
    assert pack_int32(torch.tensor([0xFF, 0, 0, 0x80]), 8).tolist() == [0x800000FF - 2**32]
