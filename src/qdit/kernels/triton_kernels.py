"""Triton GPU kernels for the group-wise integer product of :mod:`qdit.kernels.formats`.

Two kernels:

* :func:`quantize_acts_triton`: dynamic per-token, per-group activation quantization, bit-exact with
  :func:`qdit.kernels.formats.quantize_acts` (``granularity=PerToken()``), so a layer can quantize its
  input on the GPU without a round trip through several PyTorch ops;
* :func:`int_linear_triton`: ``y = bias + sum_b s_a s_w (P + d_w Asum - z_a Wsum - B z_a d_w)`` over
  (M, N) tiles, one int8 x int8 -> int32 ``tl.dot`` per K block, the zero-point correction and the two
  scales applied per block inside the loop (the scales change from block to block, so the integer
  accumulator cannot run over the whole of K). 4-bit weights are read packed, two codes per byte, and
  unpacked in registers: the weight traffic is half that of int8 codes.

Triton is imported lazily: importing this module costs nothing and never fails, and the kernels are
defined on first use, so ``TRITON_INTERPRET=1`` set before that first use runs them in Triton's
interpreter on CPU tensors (how the tests check them on a machine without a GPU).
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace
from typing import Any

import torch

from qdit.kernels.formats import ACT_OFFSET, IntActs, IntWeight, block_size
from qdit.quant.primitives import code_range, num_groups

# Bound on first use by _kernels(). The kernels must see triton.language and the helpers they call as
# *module globals*: the interpreter finds the ``tl`` it patches by scanning the kernel's ``__globals__``
# and re-executes kernels without their closures, so local names would not resolve there.
tl: Any = None
triton: Any = None
_round_half_even: Any = None

# small fixed tiles for the interpreter (and CPU tensors): every branch runs, and runs in milliseconds
_INTERPRETER_TILES = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 2}


@functools.cache
def triton_available() -> bool:
    """Whether ``triton`` can be imported (never raises: a broken install counts as absent)."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def _interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (``TRITON_INTERPRET``), read now, not at import."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def _autotune_configs() -> list[Any]:
    """Tiles for a tensor-core GPU. ``BLOCK_K >= 64`` keeps each of the two half-K dots of the packed
    4-bit path at >= 32, the K of an int8 MMA instruction."""
    configs = []
    for bm, bn, bk, warps, stages in [
        (128, 128, 64, 8, 4),
        (128, 128, 128, 8, 3),
        (128, 256, 64, 8, 3),
        (64, 128, 128, 4, 4),
        (128, 64, 128, 4, 4),
        (64, 64, 128, 4, 4),
        (64, 256, 64, 8, 4),
        (256, 128, 64, 8, 3),
    ]:
        meta = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}
        configs.append(triton.Config(meta, num_warps=warps, num_stages=stages))
    return configs


@functools.cache
def _kernels() -> SimpleNamespace:
    """Define (and for the GPU, wrap in autotuning) the kernels; on first use, never at import."""
    global tl, triton, _round_half_even
    import triton
    import triton.language as tl

    @triton.jit
    def _round_half_even(v):
        # torch.round rounds half to even; libdevice's rint does too, but the interpreter cannot run
        # libdevice, so do it by hand. v - floor(v) is exact for every float32 whose rounding matters
        # (|v| < 2^23; above that v is already an integer and d == 0).
        f = tl.floor(v)
        d = v - f
        half = f * 0.5
        odd = tl.floor(half) != half
        up = (d > 0.5) | ((d == 0.5) & odd)
        return tl.where(up, f + 1.0, f)

    @triton.jit
    def quantize_acts_kernel(
        x_ptr,
        codes_ptr,
        scale_ptr,
        zero_ptr,
        stride_xm,
        stride_xk,
        stride_cm,
        stride_sm,
        GROUP,
        BLOCK: tl.constexpr,
        QMIN: tl.constexpr,
        QMAX: tl.constexpr,
        OFFSET: tl.constexpr,
        SYMMETRIC: tl.constexpr,
    ):
        # one program per (row, group): the range of a group is a reduction over the whole group
        row = tl.program_id(0).to(tl.int64)
        grp = tl.program_id(1)
        offs = tl.arange(0, BLOCK)
        mask = offs < GROUP
        cols = grp * GROUP + offs
        # padding lanes read 0, which the range must contain anyway: they change neither min nor max
        x = tl.load(x_ptr + row * stride_xm + cols * stride_xk, mask=mask, other=0.0).to(tl.float32)
        lo = tl.minimum(tl.min(x, axis=0), 0.0)
        hi = tl.maximum(tl.max(x, axis=0), 0.0)
        # true (IEEE) divisions throughout, as torch computes them: on the GPU a plain `/` may be
        # an approximate division, and a one-ulp different scale moves codes across rounding ties
        if SYMMETRIC:
            s = tl.math.div_rn(tl.maximum(-lo, hi), QMAX * 1.0)
        else:
            s = tl.math.div_rn(hi - lo, QMAX * 1.0)
        s = tl.where(s > 0.0, s, 1.0)
        if SYMMETRIC:
            z = s * 0.0
        else:
            z = tl.minimum(tl.maximum(_round_half_even(tl.math.div_rn(-lo, s)), QMIN * 1.0), QMAX * 1.0)
        q = _round_half_even(tl.math.div_rn(x, s)) + z
        q = tl.minimum(tl.maximum(q, QMIN * 1.0), QMAX * 1.0) + OFFSET
        tl.store(codes_ptr + row * stride_cm + cols, q.to(tl.int32).to(tl.uint8), mask=mask)
        tl.store(scale_ptr + row * stride_sm + grp, s)
        tl.store(zero_ptr + row * stride_sm + grp, (z + OFFSET).to(tl.int32))

    @triton.jit
    def int_linear_kernel(
        a_ptr,  # uint8 [M, K] activation codes
        sa_ptr,  # float32 [M, Ga]
        za_ptr,  # int32 [M, Ga]
        w_ptr,  # uint8 [N, K] codes, or [N, K // 2] two 4-bit codes per byte
        sw_ptr,  # float16 / float32 [N, Gw]
        zw_ptr,  # integer [N, Gw] (unused when not HAS_WZERO)
        bias_ptr,  # [N] (unused when not HAS_BIAS)
        out_ptr,  # float32 [M, N]
        M,
        N,
        BLK,  # the K block: the finer of the two groups
        NUM_BLKS,
        A_RATIO,  # activation group // BLK
        W_RATIO,  # weight group // BLK
        stride_am,
        stride_ak,
        stride_sam,
        stride_zam,
        stride_wn,
        stride_wk,
        stride_swn,
        stride_zwn,
        stride_om,
        HALF: tl.constexpr,  # 2^(bits-1): unsigned weight code -> signed
        PACKED: tl.constexpr,
        HAS_WZERO: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        EVEN_K: tl.constexpr,  # BLK % BLOCK_K == 0: no K masks in the inner loop
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr,
    ):
        # grouped launch order: GROUP_M row tiles share each column tile while it is in L2
        pid = tl.program_id(0)
        tiles_m = tl.cdiv(M, BLOCK_M)
        tiles_n = tl.cdiv(N, BLOCK_N)
        per_group = GROUP_M * tiles_n
        first_m = (pid // per_group) * GROUP_M
        rows_here = tl.minimum(tiles_m - first_m, GROUP_M)
        pid_m = first_m + (pid % per_group) % rows_here
        pid_n = (pid % per_group) // rows_here

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_m = offs_m < M
        mask_n = offs_n < N
        rows_a = offs_m.to(tl.int64)[:, None] * stride_am
        rows_w = offs_n.to(tl.int64)[None, :] * stride_wn

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for b in range(0, NUM_BLKS):
            k0 = b * BLK
            p = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
            a_sum = tl.zeros((BLOCK_M,), dtype=tl.int32)
            w_sum = tl.zeros((BLOCK_N,), dtype=tl.int32)
            for kk in range(0, BLK, BLOCK_K):
                if PACKED:
                    # byte j holds columns 2j (low nibble) and 2j+1 (high nibble): one dot for the
                    # even columns, one for the odd ones, each against the matching activations
                    offs_h = kk // 2 + tl.arange(0, BLOCK_K // 2)
                    if EVEN_K:
                        mask_ak = mask_m[:, None]
                        mask_wk = mask_n[None, :]
                    else:
                        in_blk = offs_h < BLK // 2
                        mask_ak = mask_m[:, None] & in_blk[None, :]
                        mask_wk = in_blk[:, None] & mask_n[None, :]
                    cols = k0 + 2 * offs_h
                    # padding reads activation code 128 (a8 = 0) and weight byte 0x88 (w = 0), so it
                    # adds nothing to the dot products or to the row and column sums
                    a_even = tl.load(a_ptr + rows_a + cols[None, :] * stride_ak, mask=mask_ak, other=128)
                    a_odd = tl.load(a_ptr + rows_a + (cols + 1)[None, :] * stride_ak, mask=mask_ak, other=128)
                    byte = tl.load(
                        w_ptr + rows_w + (k0 // 2 + offs_h)[:, None] * stride_wk, mask=mask_wk, other=0x88
                    ).to(tl.int32)
                    a_even = a_even.to(tl.int32) - 128
                    a_odd = a_odd.to(tl.int32) - 128
                    w_lo = (byte & 0xF) - HALF
                    w_hi = (byte >> 4) - HALF
                    p = tl.dot(a_even.to(tl.int8), w_lo.to(tl.int8), acc=p, out_dtype=tl.int32)
                    p = tl.dot(a_odd.to(tl.int8), w_hi.to(tl.int8), acc=p, out_dtype=tl.int32)
                    a_sum += tl.sum(a_even, axis=1) + tl.sum(a_odd, axis=1)
                    w_sum += tl.sum(w_lo, axis=0) + tl.sum(w_hi, axis=0)
                else:
                    offs_k = kk + tl.arange(0, BLOCK_K)
                    if EVEN_K:
                        mask_ak = mask_m[:, None]
                        mask_wk = mask_n[None, :]
                    else:
                        in_blk = offs_k < BLK
                        mask_ak = mask_m[:, None] & in_blk[None, :]
                        mask_wk = in_blk[:, None] & mask_n[None, :]
                    cols = k0 + offs_k
                    # a - 128 as int8 (the zero point is shifted to match), w = code - 2^(bits-1)
                    a = tl.load(a_ptr + rows_a + cols[None, :] * stride_ak, mask=mask_ak, other=128)
                    w = tl.load(w_ptr + rows_w + cols[:, None] * stride_wk, mask=mask_wk, other=HALF)
                    a = a.to(tl.int32) - 128
                    w = w.to(tl.int32) - HALF
                    p = tl.dot(a.to(tl.int8), w.to(tl.int8), acc=p, out_dtype=tl.int32)
                    a_sum += tl.sum(a, axis=1)
                    w_sum += tl.sum(w, axis=0)

            ga = b // A_RATIO
            gw = b // W_RATIO
            s_a = tl.load(sa_ptr + offs_m * stride_sam + ga, mask=mask_m, other=0.0)
            z_a = tl.load(za_ptr + offs_m * stride_zam + ga, mask=mask_m, other=128) - 128
            s_w = tl.load(sw_ptr + offs_n * stride_swn + gw, mask=mask_n, other=0.0).to(tl.float32)
            if HAS_WZERO:
                z_w = tl.load(zw_ptr + offs_n * stride_zwn + gw, mask=mask_n, other=HALF).to(tl.int32)
                d_w = HALF - z_w
                # sum (a8 - z'_a)(w + d_w) = P + d_w Asum - z'_a (Wsum + BLK d_w), exact in int32
                p += d_w[None, :] * a_sum[:, None]
                p -= z_a[:, None] * (w_sum + BLK * d_w)[None, :]
            else:
                p -= z_a[:, None] * w_sum[None, :]
            acc += p.to(tl.float32) * (s_a[:, None] * s_w[None, :])

        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        out = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
        tl.store(out, acc, mask=mask_m[:, None] & mask_n[None, :])

    even_k = triton.heuristics({"EVEN_K": lambda meta: meta["BLK"] % meta["BLOCK_K"] == 0})
    linear = even_k(int_linear_kernel)
    tuned = triton.autotune(
        configs=_autotune_configs(), key=["M", "N", "BLK", "NUM_BLKS", "PACKED", "HAS_WZERO"]
    )(linear)
    return SimpleNamespace(quantize_acts=quantize_acts_kernel, linear=linear, linear_tuned=tuned)


def _check_device(t: torch.Tensor) -> None:
    if not t.is_cuda and not _interpreting():
        raise RuntimeError(
            "the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 set before their first use)"
        )


def quantize_acts_triton(x2d: torch.Tensor, bits: int, group: int, symmetric: bool = False) -> IntActs:
    """Per-token, per-group activation quantization of the rows of ``x2d [M, K]``.

    Bit-exact with ``quantize_acts(x2d, bits, group, symmetric, PerToken())``: the same float32 ranges
    (widened to contain 0), IEEE divisions and round-half-to-even, so the integer product sees the same
    codes as the fake quantizer every kernel is tested against.
    """
    if x2d.dim() != 2:
        raise ValueError(f"expected a 2-D tensor of rows, got shape {tuple(x2d.shape)}")
    qmin, qmax = code_range(bits, symmetric)  # checks the bits (qdit.quant.rules)
    rows, width = x2d.shape
    groups = num_groups(width, group)
    size = width // groups
    kern = _kernels()
    _check_device(x2d)
    dev = x2d.device
    codes = torch.empty(rows, width, dtype=torch.uint8, device=dev)
    scale = torch.empty(rows, groups, dtype=torch.float32, device=dev)
    zero = torch.empty(rows, groups, dtype=torch.int32, device=dev)
    if rows == 0:
        return IntActs(codes, scale, zero)
    kern.quantize_acts[(rows, groups)](
        x2d,
        codes,
        scale,
        zero,
        x2d.stride(0),
        x2d.stride(1),
        codes.stride(0),
        scale.stride(0),
        size,
        BLOCK=triton.next_power_of_2(size),
        QMIN=qmin,
        QMAX=qmax,
        OFFSET=ACT_OFFSET if symmetric else 0,
        SYMMETRIC=symmetric,
    )
    return IntActs(codes, scale, zero)


def int_linear_triton(
    acts: IntActs, weight: IntWeight, bias: torch.Tensor | None = None, tiles: dict[str, int] | None = None
) -> torch.Tensor:
    """``float32 [M, N]``: the group-wise integer product of ``acts`` and ``weight`` plus ``bias``.

    ``tiles`` (``BLOCK_M``, ``BLOCK_N``, ``BLOCK_K``, ``GROUP_M``) fixes the tile shape; by default CUDA
    tensors are autotuned and the interpreter uses small fixed tiles.
    """
    m, width = acts.codes.shape
    if width != weight.in_features:
        raise ValueError(f"activations have {width} columns, the weight {weight.in_features}")
    blk = block_size(width, acts.group, weight.group)
    data = weight.data
    packed = weight.packed
    if packed and (weight.bits > 4 or blk % 2):
        # a byte must not straddle two K blocks; such weights are rare, so unpack them here
        data, packed = weight.codes(), False
    if acts.codes.dtype != torch.uint8 or data.dtype != torch.uint8:
        raise ValueError(f"expected uint8 codes, got {acts.codes.dtype} and {data.dtype}")
    if bias is not None and (bias.shape != (weight.out_features,) or bias.stride(0) != 1):
        raise ValueError(f"bias must be a contiguous [{weight.out_features}] tensor")
    kern = _kernels()
    _check_device(acts.codes)
    # the kernel indexes the per-group tensors as row-major (a no-op for the usual contiguous ones)
    a_scale, a_zero, w_scale = acts.scale.contiguous(), acts.zero.contiguous(), weight.scale.contiguous()
    n = weight.out_features
    dev = acts.codes.device
    out = torch.empty(m, n, dtype=torch.float32, device=dev)
    if m == 0 or n == 0:
        return out if bias is None else out + bias.float()
    zero = weight.zero.contiguous() if weight.zero is not None else w_scale  # else a placeholder pointer
    meta = {
        "HALF": 2 ** (weight.bits - 1),
        "PACKED": packed,
        "HAS_WZERO": weight.zero is not None,
        "HAS_BIAS": bias is not None,
    }
    args = (
        acts.codes,
        a_scale,
        a_zero,
        data,
        w_scale,
        zero,
        bias if bias is not None else w_scale,
        out,
        m,
        n,
        blk,
        width // blk,
        acts.group // blk,
        weight.group // blk,
        acts.codes.stride(0),
        acts.codes.stride(1),
        a_scale.stride(0),
        a_zero.stride(0),
        data.stride(0),
        data.stride(1),
        w_scale.stride(0),
        zero.stride(0),
        out.stride(0),
    )

    def grid(meta: dict[str, int]) -> tuple[int]:
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    if tiles is None and (_interpreting() or dev.type != "cuda"):
        tiles = _INTERPRETER_TILES
    if tiles is not None:
        kern.linear[grid](*args, **meta, **tiles)
    else:
        kern.linear_tuned[grid](*args, **meta)
    return out
