"""The integer linear product on CPU: one entry point, several paths, the faster one chosen by measuring.

Paths:

* ``amx``: the compiled kernel (``csrc/qdit_cpu.cpp``): u8 x s8 AMX tiles with the per-block scales
  applied inside the accumulation (the zero-point corrections exact in int32), the activation
  quantization fused in (each thread quantizes a chunk of its rows right before multiplying it; sample
  ranges included), float32 or bfloat16 written by the kernel. Needs the built extension and a CPU with
  AMX-INT8 (and AVX-512 VNNI / BF16).
* ``torch``: pure PyTorch (:func:`qdit.kernels.reference.int_linear_torch`), one ``torch._int_mm`` per
  K block; always available.

:func:`prepare_weight` turns an :class:`IntWeight` into the form a path wants once (for ``amx`` the
panel-major tile stream, which replaces the plain codes: the layer holds one copy of its weights).
:func:`int_linear` runs it. With ``path="auto"`` the first call for each shape times every path on the
actual inputs and remembers the faster one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from qdit.kernels.cpu import cpu_extension
from qdit.kernels.formats import IntActs, IntWeight, block_size, quantize_acts
from qdit.kernels.reference import int_linear_torch
from qdit.quant.activation import activation_range
from qdit.quant.primitives import qparams

PATHS = ("amx", "torch")
_PANEL = 32  # the AMX kernel's panel of output rows
_MAX_BLOCK = 16383  # the largest K block of the AMX kernel (int16 pairs in its corrections)


@dataclass(frozen=True)
class ActQuant:
    """How the input activations are quantized (the layer's activation spec, as plain values)."""

    bits: int
    group: int
    symmetric: bool = False
    granularity: str = "token"


@dataclass
class KernelWeight:
    """A quantized weight prepared for one path. ``weight`` (the plain :class:`IntWeight`) is kept for
    the ``torch`` path only; the ``amx`` path keeps its tile stream, the scales and zero points."""

    path: str
    in_features: int
    out_features: int
    bits: int
    block: int
    scale: torch.Tensor  # [N, G] as stored
    zero: torch.Tensor | None  # [N, G] or None (symmetric)
    weight: IntWeight | None = None
    stream: torch.Tensor | None = None
    pack4: bool = False
    kstep: int = 0
    sw: torch.Tensor | None = None  # [nb, Np] float32 weight scales (zero columns pad the last panel)
    # [nb, Np] int32: int16 pairs of the zero-point corrections, with nws = -(Wsum + block * d_w): wc =
    # (nws, d_w) for blocks up to 128 columns, else wc1 = (d_w, 128 d_w) and wc2 = (nws % 128, nws // 128)
    wc: torch.Tensor | None = None
    wc1: torch.Tensor | None = None
    wc2: torch.Tensor | None = None

    def int_weight(self) -> IntWeight:
        """The plain codes again (for saving and for the fake-quantization reference)."""
        if self.weight is not None:
            return self.weight
        ext = cpu_extension()
        if ext is None:
            raise RuntimeError("this weight is in the AMX layout, but the CPU kernels are not available")
        assert self.stream is not None
        codes = ext.unpack_weight(
            self.stream, self.out_features, self.in_features, self.bits, self.kstep, self.pack4
        )
        return IntWeight.from_codes(codes, self.scale, self.zero, self.bits)

    def nbytes(self) -> int:
        tensors = [self.scale, self.zero, self.stream, self.sw, self.wc, self.wc1, self.wc2]
        if self.weight is not None:
            tensors.append(self.weight.data)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def available_paths() -> list[str]:
    return (["amx"] if cpu_extension() is not None else []) + ["torch"]


def _kstep(block: int) -> int:
    for ks in (64, 32, 16, 8, 4):
        if block % ks == 0:
            return ks
    return 0


def supports(path: str, block: int, device: torch.device) -> bool:
    if path == "torch":
        return True
    return (
        path == "amx" and device.type == "cpu" and _kstep(block) > 0 and block <= _MAX_BLOCK
        and cpu_extension() is not None
    )  # fmt: skip


def prepare_weight(weight: IntWeight, act_group: int, path: str) -> KernelWeight:
    """``weight`` in the form ``path`` computes with (the activation group fixes the K block)."""
    k, n = weight.in_features, weight.out_features
    blk = block_size(k, act_group, weight.group)
    if path == "torch":
        return KernelWeight("torch", k, n, weight.bits, blk, weight.scale, weight.zero, weight=weight)
    if path != "amx":
        raise ValueError(f"unknown kernel path {path!r}; use one of {', '.join(PATHS)}")
    ext = cpu_extension()
    ks = _kstep(blk)
    if ext is None or ks == 0 or blk > _MAX_BLOCK or weight.data.device.type != "cpu":
        raise ValueError(f"the amx path cannot run a {n}x{k} weight with block {blk} here")
    pack4 = weight.bits == 4 and (k * _PANEL) % 128 == 0
    stream = ext.prepack_weight(weight.data.contiguous(), k, weight.bits, ks, pack4)
    nb = k // blk
    np_ = -(-n // _PANEL) * _PANEL
    reps = nb // weight.scale.shape[1]
    dw = weight.offset().repeat_interleave(reps, dim=1)
    sw = weight.scale.float().repeat_interleave(reps, dim=1)
    wsum = weight.signed().reshape(n, nb, blk).sum(-1, dtype=torch.int32)
    nws = -(wsum + blk * dw)  # |nws| <= 255 * blk and |dw| <= 128: int16 pairs while blk <= 128

    def padded(t: torch.Tensor) -> torch.Tensor:  # [N, nb] -> [nb, Np] (zero columns pad the last panel)
        out = torch.zeros(nb, np_, dtype=t.dtype)
        out[:, :n] = t.t()
        return out

    def pairs(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:  # int16 pairs in one int32
        return padded(((lo & 0xFFFF) | (hi << 16)).int())

    if blk <= 128:
        wc, wc1, wc2 = pairs(nws, dw), None, None
    else:
        wc, wc1, wc2 = None, pairs(dw, 128 * dw), pairs(nws % 128, nws.div(128, rounding_mode="floor"))
    return KernelWeight(
        "amx", k, n, weight.bits, blk, weight.scale, weight.zero, stream=stream, pack4=pack4, kstep=ks,
        sw=padded(sw), wc=wc, wc1=wc1, wc2=wc2,
    )  # fmt: skip


def _act_ranges(
    x: torch.Tensor, act: ActQuant, ch_min: torch.Tensor | None, ch_max: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row scale and zero point ``[M, G]`` (with the storage offset) for sample / static ranges."""
    xg, xmin, xmax = activation_range(x, act.group, act.granularity, ch_min, ch_max)
    scale, zero = qparams(xmin, xmax, act.bits, act.symmetric)
    rows, groups = xg[..., 0].numel() // xg.shape[-2], xg.shape[-2]
    lead = xg.shape[:-2]
    offset = 128 if act.symmetric else 0
    scale = scale.expand(*lead, groups, 1).reshape(rows, groups)
    zero = (zero + offset).expand(*lead, groups, 1).reshape(rows, groups)
    return scale, zero


def _pairs(kw: KernelWeight) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``wc1, wc2, wc`` for the kernel (an unused one as any int32 tensor)."""
    used = kw.wc if kw.wc is not None else kw.wc1
    assert used is not None
    return (
        kw.wc1 if kw.wc1 is not None else used,
        kw.wc2 if kw.wc2 is not None else used,
        kw.wc if kw.wc is not None else used,
    )


def _run_amx(
    x: torch.Tensor,
    kw: KernelWeight,
    act: ActQuant,
    bias: torch.Tensor | None,
    ch_min: torch.Tensor | None,
    ch_max: torch.Tensor | None,
) -> torch.Tensor:
    """``x[..., K]`` -> ``[M, N]`` in ``x``'s dtype when bfloat16, else float32 (no copies of ``x`` when it
    is contiguous float32 or bfloat16)."""
    ext = cpu_extension()
    assert ext is not None and kw.stream is not None
    x2d = x.reshape(-1, kw.in_features)
    if x2d.dtype not in (torch.float32, torch.bfloat16):
        x2d = x2d.float()
    x2d = x2d.contiguous()
    rows = x2d.shape[0]
    sample_rows, scale, zero = 0, None, None
    if act.granularity == "sample":
        sample_rows = rows // x.shape[0] if x.dim() > 1 else rows
    elif act.granularity != "token":
        scale, zero = _act_ranges(x, act, ch_min, ch_max)
    out_dtype = torch.bfloat16 if x2d.dtype == torch.bfloat16 else torch.float32
    return ext.amx_linear_x(
        x2d, act.group, act.bits, act.symmetric, sample_rows, scale, zero, kw.stream, kw.bits, kw.pack4,
        kw.out_features, kw.block, kw.kstep, kw.sw, *_pairs(kw), bias, out_dtype,
    )  # fmt: skip


def _run_torch(
    x: torch.Tensor,
    kw: KernelWeight,
    act: ActQuant,
    bias: torch.Tensor | None,
    ch_min: torch.Tensor | None,
    ch_max: torch.Tensor | None,
) -> torch.Tensor:
    assert kw.weight is not None
    acts: IntActs = quantize_acts(x, act.bits, act.group, act.symmetric, act.granularity, ch_min, ch_max)
    return int_linear_torch(acts, kw.weight, bias)


def int_linear(
    x: torch.Tensor,
    kw: KernelWeight,
    act: ActQuant,
    bias: torch.Tensor | None = None,
    ch_min: torch.Tensor | None = None,
    ch_max: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x[..., K]`` through the quantized layer: activations quantized by ``act`` (``sample``
    granularity takes the first dimension of ``x`` as the sample), the integer product on ``kw.path``;
    the result has ``x``'s dtype."""
    lead = x.shape[:-1]
    if kw.path == "amx":
        y = _run_amx(x, kw, act, bias, ch_min, ch_max)
    else:
        y = _run_torch(x, kw, act, bias, ch_min, ch_max)
    return y.reshape(*lead, kw.out_features).to(x.dtype)


def time_paths(
    x: torch.Tensor, weight: IntWeight, act: ActQuant, bias: torch.Tensor | None = None, repeats: int = 3
) -> dict[str, float]:
    """Seconds per call of every path that can run this product (best of ``repeats``), measured on ``x``."""
    times: dict[str, float] = {}
    for path in available_paths():
        blk = block_size(weight.in_features, act.group, weight.group)
        if not supports(path, blk, x.device):
            continue
        kw = prepare_weight(weight, act.group, path)
        int_linear(x, kw, act, bias)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            int_linear(x, kw, act, bias)
            best = min(best, time.perf_counter() - t0)
        times[path] = best
    return times
