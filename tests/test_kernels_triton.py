"""The Triton kernels against the exact reference: bit-exact activation codes, integer products exact up
to the float32 scaling. Without a GPU they run in Triton's interpreter on CPU tensors (tiny shapes)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    # must happen before triton is imported and before the kernels are first defined
    os.environ["TRITON_INTERPRET"] = "1"

pytest.importorskip("triton")

from qdit.kernels.formats import IntActs, IntWeight, quantize_acts  # noqa: E402
from qdit.kernels.reference import int_linear_reference  # noqa: E402
from qdit.kernels.triton_kernels import (  # noqa: E402
    int_linear_triton,
    quantize_acts_triton,
    triton_available,
)
from qdit.quant.weight import quantize_weight  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
M, N = 20, 24  # neither a multiple of the 16 x 16 interpreter tile
TOL = 1e-5  # of the output's max |y|: the integer parts are exact, only the float32 scaling rounds


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.cpu() - ref.cpu()).abs().max() / ref.abs().max()).item()


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.cpu()


def _ref(acts: IntActs, weight: IntWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The exact product, computed on the CPU whatever the kernels ran on."""
    acts = IntActs(acts.codes.cpu(), acts.scale.cpu(), acts.zero.cpu())
    return int_linear_reference(acts, weight.to_fn(_cpu), None if bias is None else bias.cpu())


def _want(x: torch.Tensor, bits: int, group: int, symmetric: bool) -> IntActs:
    """``quantize_acts`` on the CPU, the definition. (On CUDA, torch divides by the Python number in
    ``(max - min) / (2^b - 1)`` as a multiplication by its reciprocal, which can move a scale by an ulp.)"""
    return quantize_acts(x.cpu(), bits, group, symmetric, "token")


def _acts(k: int, group: int, symmetric: bool, seed: int = 0) -> IntActs:
    g = torch.Generator().manual_seed(seed)
    # a per-column offset makes the activation zero points differ from 128 and from each other
    x = torch.randn(M, k, generator=g) * 2 + torch.linspace(-1, 3, k)
    x[3, :] = 0.0  # an all-zero row: scale 1, every code at the zero point
    return quantize_acts(x.to(DEVICE), 8, group, symmetric, "token")


def _weight(k: int, bits: int, group: int, symmetric: bool, seed: int = 1) -> IntWeight:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, k, generator=g) * 0.1 + 0.02
    return IntWeight.from_qweight(quantize_weight(w, bits, group, symmetric)).to_fn(lambda t: t.to(DEVICE))


def test_triton_available() -> None:
    assert triton_available() is True


def test_import_does_not_import_triton() -> None:
    code = (
        "import sys, qdit.kernels.triton_kernels as t\n"
        "assert 'triton' not in sys.modules, 'triton imported at module import'\n"
        "assert t.tl is None\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


# ------------------------------------------------------------------ activation quantization


def _assert_same_acts(got: IntActs, want: IntActs) -> None:
    assert got.codes.dtype == torch.uint8 and got.scale.dtype == torch.float32
    assert got.zero.dtype == torch.int32
    assert torch.equal(got.scale.cpu(), want.scale.cpu())
    assert torch.equal(got.zero.cpu(), want.zero.cpu())
    assert torch.equal(got.codes.cpu(), want.codes.cpu())


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group", [32, 0, 48])
def test_quantize_acts_bit_exact(bits: int, symmetric: bool, group: int) -> None:
    g = torch.Generator().manual_seed(bits + 10 * symmetric + group)
    x = torch.randn(M, 96, generator=g) * torch.logspace(-3, 2, M)[:, None]  # many magnitudes
    x[1, :] = 0.0
    x[2, :] = x[2, :].abs()  # min 0: the widened range starts at 0
    x[4, :] = -x[4, :].abs()
    x = x.to(DEVICE)
    _assert_same_acts(quantize_acts_triton(x, bits, group, symmetric), _want(x, bits, group, symmetric))


@pytest.mark.parametrize("symmetric", [False, True])
def test_quantize_acts_ties_round_half_to_even(symmetric: bool) -> None:
    # scale exactly 1 (range 255 asymmetric, absmax 127 symmetric): x / s lands on .5 ties
    ties = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 100.5, 101.5, -99.5, 98.5, -98.5, 3.0])
    x = torch.zeros(4, 32)
    if symmetric:
        x[:, 0], x[:, 1] = 127.0, -127.0
    else:
        x[:, 0], x[:, 1] = 154.5, -100.5  # the zero point -(-100.5) / 1 is itself a tie -> 100
        x[2, 0], x[2, 1] = 155.0, -100.0
    x[:, 2 : 2 + ties.numel()] = ties
    x[3] = x[3] * 0.5  # scale 1/2: the same ties, now after a division by a power of two
    want = _want(x, 8, 0, symmetric)
    assert (((x / want.scale) % 1) == 0.5).sum() >= 30  # the test really exercises ties
    got = quantize_acts_triton(x.to(DEVICE), 8, 0, symmetric)
    _assert_same_acts(got, want)
    if not symmetric:
        assert want.zero[0, 0].item() == 100  # round(100.5) = 100, half to even
    assert want.codes[0, 4].item() - want.zero[0, 0].item() == 2  # round(2.5) = 2


def test_quantize_acts_divides_like_torch() -> None:
    # values one ulp around (k + 1/2) * s, where x / s and x * (1 / s) round to different codes: the
    # kernel must divide, as torch does, to reproduce every code
    g = torch.Generator().manual_seed(2)
    rows, width = 4, 256
    x = torch.zeros(rows, width)
    disagree = 0
    for r in range(rows):
        hi, lo = 1 + 9 * torch.rand(1, generator=g), -10 * torch.rand(1, generator=g)
        s = (hi - lo) / 255
        mid = (torch.arange(int(lo / s) + 1, int(hi / s) - 1) + 0.5) * s
        cand = torch.cat([torch.nextafter(mid, mid + 1), torch.nextafter(mid, mid - 1), mid])
        cand = cand[(cand > lo) & (cand < hi)]
        differs = torch.round(cand / s) != torch.round(cand * (1 / s))
        cand = torch.cat([cand[differs], cand[~differs]])[: width - 2]
        disagree += int(differs.sum())
        x[r, :2] = torch.cat([lo, hi])
        x[r, 2 : 2 + cand.numel()] = cand
    assert disagree >= 20
    want = _want(x, 8, 0, False)
    assert torch.equal(want.scale[:, 0], (x.amax(1) - x.amin(1)) / 255)  # the s the candidates assumed
    _assert_same_acts(quantize_acts_triton(x.to(DEVICE), 8, 0, False), want)


def test_quantize_acts_strided_and_bf16_input() -> None:
    g = torch.Generator().manual_seed(3)
    base = torch.randn(64, M, generator=g).to(DEVICE)
    xt = base.t()  # non-contiguous rows
    _assert_same_acts(quantize_acts_triton(xt, 8, 32, False), _want(xt, 8, 32, False))
    xb = base.t().contiguous().to(torch.bfloat16)
    _assert_same_acts(quantize_acts_triton(xb, 8, 16, True), _want(xb, 8, 16, True))


def test_quantize_acts_rejects_bad_input() -> None:
    x = torch.randn(4, 64, device=DEVICE)
    with pytest.raises(ValueError):
        quantize_acts_triton(x, 8, 48, False)  # 48 does not divide 64
    with pytest.raises(ValueError):
        quantize_acts_triton(x, 9, 32, False)
    with pytest.raises(ValueError):
        quantize_acts_triton(x[None], 8, 32, False)


# ------------------------------------------------------------------ the integer product

# (K, activation group, weight group): equal groups, per-channel (0), nested groups both ways, and
# blocks that the 32-wide K tile does not divide (48, 144), which take the masked inner loop
GROUPS = [
    (128, 32, 32),
    (128, 64, 64),
    (256, 0, 0),
    (256, 64, 128),
    (256, 128, 64),
    (144, 48, 144),
    (144, 0, 0),
]
WEIGHTS = [(8, False), (8, True), (4, False), (4, True)]  # (bits, symmetric); 4-bit weights are packed


@pytest.mark.parametrize("wbits,wsym", WEIGHTS)
@pytest.mark.parametrize("k,agroup,wgroup", GROUPS)
def test_int_linear_matches_reference(wbits: int, wsym: bool, k: int, agroup: int, wgroup: int) -> None:
    asym = (k + agroup + wbits) % 3 == 0  # symmetric activations in about a third of the cases
    acts = _acts(k, agroup, asym, seed=k + agroup)
    weight = _weight(k, wbits, wgroup, wsym, seed=wgroup + wbits)
    assert weight.packed == (wbits == 4)
    bias = torch.randn(N, generator=torch.Generator().manual_seed(5)).to(DEVICE) if wgroup != 64 else None
    y = int_linear_triton(acts, weight, bias)
    assert y.shape == (M, N) and y.dtype == torch.float32
    ref = _ref(acts, weight, bias)
    assert ref.abs().max() > 0.1
    assert _rel_err(y, ref) <= TOL


def test_int_linear_symmetric_acts_packed_per_channel_with_bias() -> None:
    acts = _acts(128, 0, True, seed=7)
    weight = _weight(128, 4, 0, False)
    bias = torch.linspace(-1, 1, N).to(DEVICE)
    ref = _ref(acts, weight, bias)
    assert _rel_err(int_linear_triton(acts, weight, bias), ref) <= TOL


def test_int_linear_other_tiles_and_odd_block() -> None:
    # larger tiles than the problem (every row and column masked in part) and a 64-wide K tile
    acts = _acts(192, 64, False)
    weight = _weight(192, 4, 64, False)
    tiles = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 64, "GROUP_M": 1}
    assert _rel_err(int_linear_triton(acts, weight, tiles=tiles), _ref(acts, weight)) <= TOL
    # a packed weight whose 45-wide blocks would split a byte: unpacked before the kernel
    acts = _acts(90, 45, False)
    weight = _weight(90, 4, 45, True)
    assert weight.packed
    assert _rel_err(int_linear_triton(acts, weight), _ref(acts, weight)) <= TOL


def test_int_linear_three_bit_weights() -> None:
    acts = _acts(128, 32, False)
    weight = _weight(128, 3, 32, False)
    assert not weight.packed
    assert _rel_err(int_linear_triton(acts, weight), _ref(acts, weight)) <= TOL


def test_quantize_then_multiply_end_to_end() -> None:
    g = torch.Generator().manual_seed(11)
    x = torch.randn(M, 128, generator=g).to(DEVICE)
    weight = _weight(128, 4, 64, False)
    acts = quantize_acts_triton(x, 8, 64, False)
    ref = _ref(_want(x, 8, 64, False), weight)
    assert _rel_err(int_linear_triton(acts, weight), ref) <= TOL


@pytest.mark.parametrize("bug", ["weight_zero", "act_zero", "weight_nibbles"])
def test_tolerance_catches_a_wrong_input(bug: str) -> None:
    # the same comparison fails when a kernel input is off: the tolerance has teeth
    acts = _acts(128, 32, False)
    weight = _weight(128, 4, 32, False)
    ref = _ref(acts, weight)
    if bug == "weight_zero":
        weight = IntWeight(weight.data, weight.scale, weight.zero.to(torch.int32) + 1, 4, 128)
    elif bug == "act_zero":
        acts = IntActs(acts.codes, acts.scale, acts.zero + 1)
    else:  # low and high nibbles swapped: even and odd columns exchanged
        weight = IntWeight((weight.data >> 4) | (weight.data << 4), weight.scale, weight.zero, 4, 128)
    assert _rel_err(int_linear_triton(acts, weight), ref) > 1e-3


def test_int_linear_rejects_mismatched_shapes() -> None:
    acts = _acts(128, 32, False)
    with pytest.raises(ValueError):
        int_linear_triton(acts, _weight(256, 8, 32, False))
    with pytest.raises(ValueError):  # groups 32 and 48 do not nest
        int_linear_triton(_acts(96, 32, False), _weight(96, 8, 48, False))


def test_int_linear_accepts_column_major_scales() -> None:
    acts = _acts(128, 32, False)
    weight = _weight(128, 8, 32, False)
    ref = _ref(acts, weight)
    acts = IntActs(acts.codes, acts.scale.t().contiguous().t(), acts.zero.t().contiguous().t())
    weight = IntWeight(weight.data, weight.scale.t().contiguous().t(), weight.zero, 8, 128)
    assert not acts.scale.is_contiguous()
    assert _rel_err(int_linear_triton(acts, weight), ref) <= TOL


@pytest.mark.parametrize("granularity", ["token", "sample"])
def test_quant_linear_on_the_triton_path_matches_fake(granularity: str) -> None:
    from qdit.nn import QuantLinear
    from qdit.recipe import QuantSpec

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 24).to(DEVICE)
    layer = QuantLinear.from_linear(lin, QuantSpec(4, 8, 32, 32, granularity))
    x = torch.randn(2, 10, 64, device=DEVICE) * torch.linspace(0.1, 4, 64, device=DEVICE)
    want = layer(x)
    layer.set_kernel("triton")
    assert layer.kernel == "triton" and layer.weight_codes is not None  # the plain codes are its layout
    assert _rel_err(layer(x), want) <= TOL
