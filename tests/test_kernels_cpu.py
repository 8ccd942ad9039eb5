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


needs_amx = pytest.mark.skipif("amx" not in available_paths(), reason="the AMX kernels are not built here")


def _check(y: torch.Tensor, ref: torch.Tensor, rel: float = 3e-6) -> None:
    scale = ref.abs().max()
    assert (y.double() - ref.double()).abs().max() <= rel * scale


@needs_amx
@pytest.mark.parametrize(
    "abits, asym, group, block, gran, dtype",
    [
        (8, False, 128, 128, "token", torch.bfloat16),
        (8, True, 64, 64, "sample", torch.float32),
        (6, False, 32, 8, "token", torch.float32),  # K step 8 (< 16): codes stored one by one; 6-bit clamps
        (8, False, 0, 384, "sample", torch.bfloat16),
        (8, False, 96, 32, "static", torch.float32),
    ],
)
def test_quantize_act_codes_are_exact(
    abits: int, asym: bool, group: int, block: int, gran: str, dtype
) -> None:
    """The compiled quantizer gives quantize_acts' codes, scales and zero points bit for bit (tile order)."""
    from qdit.kernels.cpu import cpu_extension
    from qdit.kernels.linear import _act_ranges, _kstep

    ext = cpu_extension()
    g = torch.Generator().manual_seed(1)
    k = 384
    x = (torch.randn(3, 23, k, generator=g) * torch.rand(k, generator=g) * 4).to(dtype)
    ch_min, ch_max = x.reshape(-1, k).float().amin(0) * 0.7, x.reshape(-1, k).float().amax(0) * 0.7
    want = quantize_acts(x, abits, group, asym, gran, ch_min, ch_max)
    ks = _kstep(block)
    scale = zero = None
    if gran == "static":
        scale, zero = _act_ranges(x, ActQuant(abits, group, asym, gran), ch_min, ch_max)
    sample_rows = 23 if gran == "sample" else 0
    codes, sa, za, asum, zc = ext.quantize_act(
        x.reshape(-1, k), group, abits, asym, block, ks, sample_rows, scale, zero
    )
    m = 69
    mp = codes.numel() // k
    plain = codes.reshape(mp // 32, k // ks, 32, ks).permute(0, 2, 1, 3).reshape(mp, k)
    assert torch.equal(plain[:m], want.codes) and not plain[m:].any()
    per_block = k // block
    assert torch.equal(sa[:m], want.scale.repeat_interleave(per_block // want.scale.shape[1], dim=1))
    assert torch.equal(za[:m], want.zero.repeat_interleave(per_block // want.zero.shape[1], dim=1))
    sums = want.codes.int().reshape(m, per_block, block).sum(-1)
    assert torch.equal(asum[:m], sums)
    if block <= 128:
        assert torch.equal(zc[:m], (za[:m] & 0xFFFF) | (sums << 16))


@needs_amx
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "rows, wbits, wsym, group, gran, dtype",
    [
        ((8, 1), 8, False, 128, "token", torch.bfloat16),  # tiny M: the threads split the panels
        ((1, 1), 4, False, 128, "token", torch.float32),
        ((3, 300), 8, True, 0, "sample", torch.bfloat16),  # samples straddle the row chunks
        ((2, 480), 4, False, 128, "sample", torch.float32),  # 4-bit, many row chunks: unpacked once
        (
            (5, 40),
            8,
            False,
            0,
            "token",
            torch.bfloat16,
        ),  # per channel, K = 1152 > 128: base-128 correction pairs
    ],
)
def test_int_linear_shapes_threads_and_bf16(
    rows: tuple, wbits: int, wsym: bool, group: int, gran: str, dtype, threads: int
) -> None:
    """The fused path (quantization inside the product) at DiT widths: every thread split, bf16 in and out."""
    k, n = 1152, 200
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(*rows, k, generator=g) * (1 + torch.rand(k, generator=g))).to(dtype)
    w = torch.randn(n, k, generator=g) / k**0.5
    bias = torch.randn(n, generator=g).to(dtype)
    iw = IntWeight.from_qweight(quantize_weight(w, wbits, group, wsym))
    ref = int_linear_reference(quantize_acts(x, 8, group, False, gran), iw, bias.float())
    kw = prepare_weight(iw, group, "amx")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = int_linear(x, kw, ActQuant(8, group, False, gran), bias)
    finally:
        torch.set_num_threads(before)
    assert y.dtype == dtype and y.shape == (*rows, n)
    y = y.reshape(-1, n)
    if dtype == torch.bfloat16:  # the float32 result rounded once to bfloat16
        _check(y, ref.bfloat16(), rel=2e-5)
        assert (
            (y.double() - ref.double()).abs() <= ref.double().abs() * 2**-8 + 3e-6 * ref.abs().max()
        ).all()
    else:
        _check(y, ref)


@needs_amx
@pytest.mark.parametrize("wbits, group", [(8, 128), (4, 64), (8, 32)])
def test_int_linear_k_chunks(wbits: int, group: int) -> None:
    """K wide enough that a panel leaves L1: the blocks run in K chunks, the float accumulators between."""
    k, n = 2304, 96
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 50, k, generator=g) * (1 + torch.rand(k, generator=g))
    w = torch.randn(n, k, generator=g) / k**0.5
    bias = torch.randn(n, generator=g)
    iw = IntWeight.from_qweight(quantize_weight(w, wbits, group, False))
    ref = int_linear_reference(quantize_acts(x, 8, group, False, "token"), iw, bias)
    kw = prepare_weight(iw, group, "amx")
    y = int_linear(x, kw, ActQuant(8, group), bias).reshape(-1, n)
    _check(y, ref)
    # the unfused entry points (quantize_act, then amx_linear) give the same bits
    from qdit.kernels.cpu import cpu_extension
    from qdit.kernels.linear import _pairs

    ext = cpu_extension()
    qa = ext.quantize_act(x.reshape(-1, k), group, 8, False, kw.block, kw.kstep, 0, None, None)
    args = (kw.stream, kw.bits, kw.pack4, n, kw.block, kw.kstep, kw.sw, *_pairs(kw), bias, torch.float32)
    assert torch.equal(ext.amx_linear(100, qa, *args), y)


@pytest.mark.parametrize("path", available_paths())
@pytest.mark.parametrize(
    "wbits, group, dtype",
    [(8, 128, torch.float32), (4, 0, torch.float32), (8, 0, torch.bfloat16), (4, 64, torch.bfloat16)],
)
def test_fused_gelu_matches_torch_gelu_of_the_product(path: str, wbits: int, group: int, dtype) -> None:
    """``activation="gelu_tanh"``: torch's tanh GELU of the exact product, rounded once to the output dtype
    (the AMX kernel computes it in its epilogue with its own exp); the sign and size of the output span
    the GELU's tails, where a wrong formula or a clamped exponent would show."""
    k, n = 256, 96
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(3, 40, k, generator=g) * 2).to(dtype)
    w = torch.randn(n, k, generator=g) / k**0.5 * 4  # outputs up to about +-30: both tails of the GELU
    bias = torch.randn(n, generator=g)
    iw = IntWeight.from_qweight(quantize_weight(w, wbits, group, False))
    kw = prepare_weight(iw, group, path)
    act = ActQuant(8, group, False, "token")
    ref = int_linear_reference(quantize_acts(x, 8, group, False, "token"), iw, bias).double()
    want = torch.nn.functional.gelu(ref, approximate="tanh")
    y = int_linear(x, kw, act, bias, activation="gelu_tanh").reshape(-1, n).double()
    assert ref.min() < -8 and ref.max() > 8
    tol = want.abs() * (2**-8 if dtype == torch.bfloat16 else 1e-5) + 1e-5 * want.abs().max()
    assert ((y - want).abs() <= tol).all()
    # without the activation the same call is the plain product (the flag is not ignored either way)
    plain = int_linear(x, kw, act, bias).reshape(-1, n).double()
    assert (plain - ref).abs().max() <= (2**-8 if dtype == torch.bfloat16 else 1e-5) * ref.abs().max()
    assert (plain - y).abs().max() > 1.0
    with pytest.raises(ValueError, match="unknown output activation 'relu'; use one of gelu_tanh"):
        int_linear(x, kw, act, bias, activation="relu")


@pytest.mark.parametrize("path", available_paths())
@pytest.mark.parametrize(
    "wbits, group, dtype", [(8, 128, torch.float32), (4, 0, torch.bfloat16), (8, 64, torch.bfloat16)]
)
def test_fused_gated_residual_matches_the_block_expression(path: str, wbits: int, group: int, dtype) -> None:
    """``residual + gate * product`` with one gate row per sample of 40 rows (N = 100: a partial last
    panel), against the exact product put through the same expression in float64."""
    k, n, samples, tokens = 256, 100, 3, 40
    g = torch.Generator().manual_seed(5)
    x = torch.randn(samples, tokens, k, generator=g).to(dtype)
    w = torch.randn(n, k, generator=g) / k**0.5
    bias = torch.randn(n, generator=g)
    residual = torch.randn(samples, tokens, n, generator=g).to(dtype)
    gate = torch.randn(samples, 6 * n, generator=g).to(dtype)[:, 2 * n : 3 * n]  # a strided chunk, as DiT's
    iw = IntWeight.from_qweight(quantize_weight(w, wbits, group, False))
    kw = prepare_weight(iw, group, path)
    act = ActQuant(8, group, False, "token")
    ref = (
        int_linear_reference(quantize_acts(x, 8, group, False, "token"), iw, bias)
        .double()
        .reshape(samples, tokens, n)
    )
    want = residual.double() + gate.double()[:, None] * ref
    y = int_linear(x, kw, act, bias, residual=residual, gate=gate).double()
    assert y.shape == want.shape
    rel = 2**-8 if dtype == torch.bfloat16 else 1e-5
    assert ((y - want).abs() <= want.abs() * rel + 1e-5 * want.abs().max()).all()
    # the gate really is per sample: the samples' gates swapped give another result
    swapped = int_linear(x, kw, act, bias, residual=residual, gate=gate.flip(0)).double()
    assert (swapped - want).abs().max() > 0.1
    with pytest.raises(ValueError, match=r"gate must be \[3, 100\] \(one row per sample\)"):
        int_linear(
            x, kw, act, bias, residual=residual, gate=torch.ones(6, n, dtype=dtype)
        )  # not one per sample
    with pytest.raises(ValueError, match="needs both residual and gate"):
        int_linear(x, kw, act, bias, residual=residual)


@needs_amx
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_gelu_tails_and_non_finite_values(dtype: torch.dtype) -> None:
    """The kernel's GELU (the precise one for float32 outputs, the cheaper one for bfloat16) where its
    exponent is clamped (huge negative outputs give -0 as torch's, not x * e^-80) and on non-finite
    outputs (NaN stays NaN, +inf stays +inf, -inf gives NaN as torch)."""
    k, n = 128, 32
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4, k, generator=g).to(dtype)
    iw = IntWeight.from_qweight(quantize_weight(torch.randn(n, k, generator=g) / k**0.5, 8, 0, False))
    kw = prepare_weight(iw, 0, "amx")
    bias = torch.zeros(n)
    bias[:8] = torch.tensor([-1e20, -3e38, float("nan"), float("inf"), float("-inf"), -6.0, -50.0, 1e20])
    y = int_linear(x, kw, ActQuant(8, 0, False, "token"), bias, activation="gelu_tanh").float()
    assert y.dtype == torch.float32 or dtype == torch.bfloat16
    ref = int_linear_reference(quantize_acts(x, 8, 0, False, "token"), iw, bias)
    want = torch.nn.functional.gelu(ref, approximate="tanh")
    assert (
        torch.equal(torch.isnan(y), torch.isnan(want))
        and torch.isnan(y[:, 2]).all()
        and torch.isnan(y[:, 4]).all()
    )
    fin = ~torch.isnan(want)
    assert torch.equal(y[fin].isinf(), want[fin].isinf())
    close = fin & ~want.isinf()
    rel = 2**-8 if dtype == torch.bfloat16 else 1e-5  # one bfloat16 step
    assert ((y[close] - want[close]).abs() <= rel * want[close].abs() + 1e-6).all()
    assert (y[:, :2] == 0).all() and (y[:, 6] == 0).all()  # not x * e^-80


@needs_amx
def test_bf16_gelu_is_within_one_bfloat16_step_everywhere() -> None:
    """The cheaper GELU of bfloat16 outputs over a dense sweep of outputs in [-12, 12] (both tails, the
    clamp, every exponent of 2^t): never more than one bfloat16 step from the correctly rounded value,
    and equal to it for the most part (its own error is about 1e-4, far below a step)."""
    k, n = 128, 32
    x = torch.zeros(256, k)
    iw = IntWeight.from_qweight(quantize_weight(torch.zeros(n, k), 8, 0, False))
    kw = prepare_weight(iw, 0, "amx")
    outputs = torch.linspace(-12, 12, x.shape[0] * n)  # the bias: the product is 0
    rows = []
    for chunk in outputs.reshape(-1, n):
        rows.append(int_linear(x[:1].bfloat16(), kw, ActQuant(8, 0), chunk, activation="gelu_tanh").float())
    y = torch.cat(rows).flatten().double()
    v = outputs.double()  # x sigmoid(2u): torch's 0.5 x (1 + tanh u) loses the far left tail to 1 + -1
    want = v / (1 + torch.exp(-2 * (2 / torch.pi) ** 0.5 * (v + 0.044715 * v**3)))
    assert torch.allclose(want, torch.nn.functional.gelu(v, approximate="tanh"), rtol=1e-12, atol=1e-15)
    rounded = want.bfloat16().double()
    step = want.abs() * 2**-7 + 1e-30  # a bfloat16 step is 2^-7 relative at most
    assert ((y - rounded).abs() <= step).all()
    assert float((y == rounded).double().mean()) > 0.85


@pytest.mark.parametrize("path", available_paths())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("granularity", ["token", "sample"])
def test_ada_norm_transforms_the_rows_as_they_are_quantized(path: str, dtype, granularity: str) -> None:
    """``ada_norm``: LayerNorm then ``* (1 + scale) + shift`` per sample, computed by the AMX kernel on
    each row before its ranges and codes, against the transform computed by torch then the product: in
    bfloat16 the kernel rounds where torch rounds (equal rows, but for a row whose norm's last bits cross
    a rounding), in float32 the last bits of mean and variance may move a code by one step. Rows with a
    large common offset and K = 200 (a partial vector at the end of each row) test the variance and the
    masks; a wrong shift, scale or sample order is far off."""
    from qdit.kernels.linear import AdaNorm

    samples, tokens, k, n = 3, 50, 200, 64
    g = torch.Generator().manual_seed(9)
    x = (torch.randn(samples, tokens, k, generator=g) * 4 + 30).to(dtype)
    w = torch.randn(n, k, generator=g) / k**0.5
    bias = torch.randn(n, generator=g)
    iw = IntWeight.from_qweight(quantize_weight(w, 8, 40, False))
    kw = prepare_weight(iw, 40, path)
    act = ActQuant(8, 40, False, granularity)
    # shift and scale are strided chunks of one modulation output, as a DiT block's
    mod = torch.randn(samples, 3 * k, generator=g).to(dtype)
    ada = AdaNorm(mod[:, k : 2 * k], mod[:, 2 * k :], 1e-6)
    want = int_linear(ada.apply(x), kw, act, bias)
    y = int_linear(x, kw, act, bias, ada_norm=ada)
    assert y.dtype == want.dtype == dtype and y.shape == want.shape == (samples, tokens, n)
    y, want = y.double(), want.double()
    rel = float((y - want).abs().max() / want.abs().max())
    assert rel <= (2**-7 if dtype == torch.bfloat16 else 2e-3), rel  # bfloat16: an output's last bit
    if dtype == torch.bfloat16:
        same_rows = float((y == want).all(-1).double().mean())
        assert same_rows >= 0.9, same_rows
    for wrong in (AdaNorm(ada.shift.flip(0), ada.scale, 1e-6), AdaNorm(ada.shift, ada.scale * 0, 1e-6)):
        off = int_linear(x, kw, act, bias, ada_norm=wrong).double()
        assert float((off - want).abs().max() / want.abs().max()) > 0.05
    with pytest.raises(ValueError, match=r"does not fit shift / scale \(3, 200\) \(one row per sample"):
        int_linear(x.reshape(6, 25, k), kw, act, bias, ada_norm=ada)


@needs_amx
@pytest.mark.parametrize(
    "mods", [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16), (torch.float16, torch.float16)]
)
def test_ada_norm_rounds_as_torch_with_mixed_dtypes(mods) -> None:
    """A bfloat16 input with shift and scale of other dtypes: torch rounds the product only when scale
    is bf16 and the sum only when shift is too (float16 rows: applied before the kernel); the fused
    result is the transform-then-product result for every row."""
    from qdit.kernels.linear import AdaNorm

    samples, tokens, k, n = 2, 40, 256, 32
    g = torch.Generator().manual_seed(10)
    x = torch.randn(samples, tokens, k, generator=g).bfloat16()
    iw = IntWeight.from_qweight(quantize_weight(torch.randn(n, k, generator=g) / k**0.5, 8, 128, False))
    kw = prepare_weight(iw, 128, "amx")
    act = ActQuant(8, 128)
    scale_dtype, shift_dtype = mods
    ada = AdaNorm(
        torch.randn(samples, k, generator=g).to(shift_dtype),
        torch.randn(samples, k, generator=g).to(scale_dtype),
        1e-6,
    )
    want = int_linear(ada.apply(x), kw, act)
    y = int_linear(x, kw, act, ada_norm=ada)
    assert y.dtype == want.dtype == ada.dtype(x.dtype)
    assert float((y == want).all(-1).double().mean()) >= 0.95


@needs_amx
@pytest.mark.parametrize("shape", [(2, 64, 147, 147), (3, 192, 71, 71), (2, 20, 9, 8), (1, 16, 3, 4)])
def test_max_pool3s2_equals_torch(shape: tuple[int, int, int, int]) -> None:
    """The compiled 3x3 stride-2 max pool against torch's, the same values (a -0.0 / +0.0 tie may differ
    in sign): channel tails (20), odd and even sizes, the smallest input; NaN propagates."""
    from qdit.kernels.cpu import cpu_extension

    ext = cpu_extension()
    assert ext is not None
    x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape))).contiguous(
        memory_format=torch.channels_last
    )
    x[0, -1, 1, 1] = float("nan")  # in the first output row's window, last channel (a tail lane for C=20)
    got = ext.max_pool3s2(x)
    ref = torch.nn.functional.max_pool2d(x, 3, 2)
    assert got.is_contiguous(memory_format=torch.channels_last) and got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(got[0, -1, 0, 0])


def test_max_pool3s2_falls_back_to_torch() -> None:
    """Inputs the loop does not take (bf16, NCHW, needing a gradient) get torch's pool."""
    from qdit.kernels.cpu import max_pool3s2

    x = torch.randn(2, 8, 9, 9)
    for y in (x, x.bfloat16().contiguous(memory_format=torch.channels_last)):
        torch.testing.assert_close(max_pool3s2(y), torch.nn.functional.max_pool2d(y, 3, 2), rtol=0, atol=0)
    g = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    max_pool3s2(g).sum().backward()
    assert g.grad is not None and int(g.grad.sum()) == 2 * 8 * 4 * 4  # one max per window
