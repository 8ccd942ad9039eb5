"""The integer linear product on CPU: one entry point, several paths, the faster one chosen by measuring.

Paths:

* ``amx``: the compiled kernel (``csrc/qdit_cpu.cpp``): u8 x s8 AMX tiles with the per-block scales
  applied inside the accumulation (the zero-point corrections exact in int32), the activation
  quantization fused in (each thread quantizes a chunk of its rows right before multiplying it; ranges
  over runs of consecutive rows included: samples, clips, frames of frame-major clips), float32 or bfloat16 written by the kernel. Needs the built extension and a CPU with
  AMX-INT8 (and AVX-512 VNNI / BF16).
* ``torch``: pure PyTorch (:func:`qdit.kernels.reference.int_linear_torch`), one ``torch._int_mm`` per
  K block; always available.
* ``triton``: the Triton kernel (:mod:`qdit.kernels.triton_kernels`) on CUDA tensors.

:func:`prepare_weight` turns an :class:`IntWeight` into the form a path wants once (for ``amx`` the
panel-major tile stream, which replaces the plain codes: the layer holds one copy of its weights).
:func:`int_linear` runs it. With ``path="auto"`` the first call for each shape times every path on the
actual inputs and remembers the faster one.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from qdit.kernels.cpu import cpu_extension
from qdit.kernels.formats import IntActs, IntWeight, block_size, quantize_acts
from qdit.kernels.reference import int_linear_torch
from qdit.quant.activation import ActLayout, activation_range, shared_rows
from qdit.quant.primitives import qparams
from qdit.quant.rules import ActGranularity, PerSample, PerToken, parse_act_granularity

PATHS = ("amx", "triton", "torch")
# activations a path can apply to the product's output before it is written (the code the AMX kernel
# takes); the other paths apply the same function after their product
ACTIVATIONS = {"gelu_tanh": 1}


def gated_residual(y: torch.Tensor, residual: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``residual + gate.unsqueeze(1) * y``: ``residual`` and ``y`` are ``[S, T, N]`` (``S`` samples, or
    any shape whose first dim is the samples) and ``gate`` is ``[S, N]``, one row per sample, as a DiT
    block computes ``x + gate * out``; the dtype follows PyTorch's promotion, as that expression's."""
    check_gated_residual(y.shape, residual, gate)
    n, s = y.shape[-1], gate.shape[0]
    return (residual.reshape(s, -1, n) + gate[:, None] * y.reshape(s, -1, n)).reshape(y.shape)


def check_gated_residual(shape: tuple[int, ...] | torch.Size, residual: torch.Tensor, gate: torch.Tensor) -> None:
    """``ValueError`` unless ``residual`` has the output ``shape`` (at least two dims, the first the
    samples) and ``gate`` is ``[S, N]`` with ``S`` that first dim."""
    if len(shape) < 2:
        raise ValueError(f"a gated residual needs an output of at least two dims, got {tuple(shape)}")
    if tuple(residual.shape) != tuple(shape):
        raise ValueError(f"residual must have the output's shape {tuple(shape)}, got {tuple(residual.shape)}")
    if gate.dim() != 2 or tuple(gate.shape) != (shape[0], shape[-1]):
        raise ValueError(f"gate must be [{shape[0]}, {shape[-1]}] (one row per sample), got {tuple(gate.shape)}")


@dataclass(frozen=True, eq=False)
class AdaNorm:
    """adaLN's input transform ``LayerNorm(x) * (1 + scale) + shift``: the norm over the last dim without
    affine (``eps``), then one row of ``shift`` / ``scale`` (``[S, K]``) per sample, the first dim of
    ``x``. An integer path applies it to each row as it quantizes it (the AMX kernel: no passes over
    memory for the norm and the modulation), the others before their product; the values are the
    ones :meth:`apply` gives, rounded where its bfloat16 operations round."""

    shift: torch.Tensor
    scale: torch.Tensor
    eps: float

    def check(self, shape: tuple[int, ...] | torch.Size) -> None:
        """``ValueError`` unless an input of ``shape`` fits (first dim the samples, last dim K)."""
        if self.shift.dim() != 2 or self.shift.shape != self.scale.shape:
            raise ValueError(
                f"shift and scale must both be [S, K], got {tuple(self.shift.shape)} and {tuple(self.scale.shape)}"
            )
        if len(shape) < 2 or (shape[0], shape[-1]) != tuple(self.shift.shape):
            raise ValueError(
                f"an input of shape {tuple(shape)} does not fit shift / scale {tuple(self.shift.shape)} "
                "(one row per sample, the input's first dim)"
            )

    def fusable(self, x: torch.dtype) -> bool:
        """Whether a kernel computes the transform of an ``x``-typed input as :meth:`apply` does: it
        emulates bfloat16 roundings only (float32 and bfloat16 inputs and rows)."""
        ok = (torch.float32, torch.bfloat16)
        return x in ok and self.shift.dtype in ok and self.scale.dtype in ok

    def dtype(self, x: torch.dtype) -> torch.dtype:
        """The dtype of the transformed input of an ``x``-typed input (PyTorch's promotion)."""
        return torch.promote_types(torch.promote_types(x, self.scale.dtype), self.shift.dtype)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The transform as PyTorch computes it (the reference)."""
        self.check(x.shape)
        k, s = x.shape[-1], self.shift.shape[0]
        n = torch.nn.functional.layer_norm(x, (k,), eps=self.eps).reshape(s, -1, k)
        return (n * (1 + self.scale[:, None]) + self.shift[:, None]).reshape(x.shape)


def apply_activation(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    """``y`` through the named output activation (``None``: unchanged), as torch computes it."""
    if activation is None:
        return y
    if activation == "gelu_tanh":
        return torch.nn.functional.gelu(y, approximate="tanh")
    raise ValueError(f"unknown output activation {activation!r}; use one of {', '.join(ACTIVATIONS)}")
_PANEL = 32  # the AMX kernel's panel of output rows
_MAX_BLOCK = 16383  # the largest K block of the AMX kernel (int16 pairs in its corrections)


@dataclass(frozen=True, init=False)
class ActQuant:
    """How the input activations are quantized (the layer's activation spec, as plain values).
    ``granularity`` is kept as a value of :mod:`qdit.quant.rules` (``PerToken()``, ...); a spelling
    (``"token"``, ...) is accepted and parsed."""

    bits: int
    group: int
    symmetric: bool = False
    granularity: ActGranularity = PerToken()
    layout: ActLayout | None = None  # how sample and frame ranges group the rows (qdit.quant.activation)

    def __init__(
        self,
        bits: int,
        group: int,
        symmetric: bool = False,
        granularity: ActGranularity | str = PerToken(),
        layout: ActLayout | None = None,
    ) -> None:
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "group", group)
        object.__setattr__(self, "symmetric", symmetric)
        object.__setattr__(self, "granularity", parse_act_granularity(granularity, "activation granularity"))
        object.__setattr__(self, "layout", layout)


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


def available_paths(device: torch.device | str = "cpu") -> list[str]:
    """The paths that can run on ``device``, fastest kind first."""
    if torch.device(device).type == "cuda":
        from qdit.kernels.triton_kernels import triton_available

        return (["triton"] if triton_available() else []) + ["torch"]
    return (["amx"] if cpu_extension() is not None else []) + ["torch"]


def _kstep(block: int) -> int:
    for ks in (64, 32, 16, 8, 4):
        if block % ks == 0:
            return ks
    return 0


def supports(path: str, block: int, device: torch.device) -> bool:
    if path == "torch":
        return True
    if path == "triton":
        return path in available_paths(device)
    return (
        path == "amx" and device.type == "cpu" and _kstep(block) > 0 and block <= _MAX_BLOCK
        and cpu_extension() is not None
    )  # fmt: skip


def _block_sums(weight: IntWeight, block: int, rows: int = 256) -> torch.Tensor:
    """``sum w`` (``w = code - 2^(bits-1)``) per output row and K block, ``int32 [N, K / block]``,
    computed a few rows at a time (no full-size temporary)."""
    n, k = weight.out_features, weight.in_features
    out = torch.empty(n, k // block, dtype=torch.int32)
    for r in range(0, n, rows):
        part = IntWeight(weight.data[r : r + rows], weight.scale[r : r + rows], None, weight.bits, k)
        out[r : r + rows] = part.codes().reshape(-1, k // block, block).sum(-1, dtype=torch.int32)
    return out - block * 2 ** (weight.bits - 1)


def prepare_weight(weight: IntWeight, act_group: int, path: str, consume: bool = False) -> KernelWeight:
    """``weight`` in the form ``path`` computes with (the activation group fixes the K block).

    ``consume``: the caller gives up ``weight.data``; a path with its own layout may then build it in
    the same memory (no second copy of the weight while converting)."""
    k, n = weight.in_features, weight.out_features
    blk = block_size(k, act_group, weight.group)
    if path in ("torch", "triton"):
        return KernelWeight(path, k, n, weight.bits, blk, weight.scale, weight.zero, weight=weight)
    if path != "amx":
        raise ValueError(f"unknown kernel path {path!r}; use one of {', '.join(PATHS)}")
    ext = cpu_extension()
    ks = _kstep(blk)
    if ext is None or not supports("amx", blk, weight.data.device):
        raise ValueError(f"the amx path cannot run a {n}x{k} weight with block {blk} here")
    pack4 = weight.bits == 4 and (k * _PANEL) % 128 == 0
    data = weight.data.contiguous()
    nb = k // blk
    np_ = -(-n // _PANEL) * _PANEL
    reps = nb // weight.scale.shape[1]
    dw = weight.offset().repeat_interleave(reps, dim=1)
    sw = weight.scale.float().repeat_interleave(reps, dim=1)
    wsum = _block_sums(weight, blk)  # before the stream may take the codes' memory
    nws = -(wsum + blk * dw)  # |nws| <= 255 * blk and |dw| <= 128: int16 pairs while blk <= 128
    inplace = consume and n % _PANEL == 0 and data.numel() == (n * k // 2 if pack4 else n * k) and (
        weight.packed if pack4 else not weight.packed
    )
    stream = ext.prepack_weight(data, k, weight.bits, ks, pack4, inplace)

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
    """Per-row scale and zero point ``[M, G]`` (with the storage offset) for ranges the kernel is given."""
    xg, xmin, xmax = activation_range(x, act.group, act.granularity, ch_min, ch_max, act.layout)
    scale, zero = qparams(xmin, xmax, act.bits, act.symmetric)
    rows, groups = xg[..., 0].numel() // xg.shape[-2], xg.shape[-2]
    lead = xg.shape[:-2]
    offset = 128 if act.symmetric else 0
    scale = scale.expand(*lead, groups, 1).reshape(rows, groups)
    zero = (zero + offset).expand(*lead, groups, 1).reshape(rows, groups)
    return scale, zero


def _residual_dtype(x: torch.dtype, residual: torch.Tensor, gate: torch.Tensor) -> torch.dtype:
    """The dtype of ``residual + gate * out`` with ``out`` in ``x`` (bfloat16 only if all three are)."""
    dt = torch.promote_types(torch.promote_types(x, residual.dtype), gate.dtype)
    return torch.bfloat16 if dt == torch.bfloat16 else torch.float32


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
    activation: str | None = None,
    residual: torch.Tensor | None = None,
    gate: torch.Tensor | None = None,
    ada_norm: AdaNorm | None = None,
) -> torch.Tensor:
    """``x[..., K]`` -> ``[M, N]`` in the input's dtype when bfloat16, else float32 (no copies of ``x``
    when it is contiguous float32 or bfloat16); ``ada_norm`` applied to the rows as they are quantized;
    ``activation``, or ``residual + gate * product``, applied by the kernel before it writes."""
    ext = cpu_extension()
    assert ext is not None and kw.stream is not None
    value_dtype = x.dtype if ada_norm is None else ada_norm.dtype(x.dtype)
    if ada_norm is not None and (
        not ada_norm.fusable(x.dtype)
        or (not isinstance(act.granularity, PerToken) and shared_rows(x.shape, act.granularity, act.layout) is None)
    ):  # roundings the kernel does not emulate, or ranges computed here (they need the transformed values)
        x, ada_norm = ada_norm.apply(x), None
    x2d = x.reshape(-1, kw.in_features)
    if x2d.dtype not in (torch.float32, torch.bfloat16):
        x2d = x2d.float()
    x2d = x2d.contiguous()
    # the kernel computes ranges per row (token) or per run of consecutive rows (sample_rows) itself;
    # ranges over rows that are not consecutive (static, frames of token-major clips) are computed here
    sample_rows, scale, zero = 0, None, None
    if not isinstance(act.granularity, PerToken):
        shared = shared_rows(x.shape, act.granularity, act.layout)
        if shared is None:
            scale, zero = _act_ranges(x, act, ch_min, ch_max)
        else:
            sample_rows = shared
    out_dtype = torch.bfloat16 if value_dtype == torch.bfloat16 else torch.float32
    if residual is not None and gate is not None:
        out_dtype = _residual_dtype(out_dtype, residual, gate)
        residual = residual.reshape(-1, kw.out_features).to(out_dtype).contiguous()
        gate = gate.to(out_dtype).contiguous()
    ada_args: dict[str, object] = {}
    if ada_norm is not None:
        bf16 = torch.bfloat16
        # torch rounds where an operation's dtype is bfloat16: the norm of a bf16 x, the product when
        # scale is bf16 too, the sum when shift is as well
        prod = x2d.dtype == bf16 and ada_norm.scale.dtype == bf16
        ada_args = dict(
            ada_shift=ada_norm.shift.float(),
            ada_scale1=(1 + ada_norm.scale).float(),  # rounded in scale's dtype, as the reference's
            ada_eps=float(ada_norm.eps),
            ada_round_norm=x2d.dtype == bf16,
            ada_round_prod=prod,
            ada_round_sum=prod and ada_norm.shift.dtype == bf16,
        )
    return ext.amx_linear_x(
        x2d, act.group, act.bits, act.symmetric, sample_rows, scale, zero, kw.stream, kw.bits, kw.pack4,
        kw.out_features, kw.block, kw.kstep, kw.sw, *_pairs(kw), bias, out_dtype,
        0 if activation is None else ACTIVATIONS[activation], residual, gate, **ada_args,
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
    acts: IntActs = quantize_acts(
        x, act.bits, act.group, act.symmetric, act.granularity, ch_min, ch_max, act.layout
    )
    return int_linear_torch(acts, kw.weight, bias)


def _run_triton(
    x: torch.Tensor,
    kw: KernelWeight,
    act: ActQuant,
    bias: torch.Tensor | None,
    ch_min: torch.Tensor | None,
    ch_max: torch.Tensor | None,
) -> torch.Tensor:
    from qdit.kernels.triton_kernels import int_linear_triton, quantize_acts_triton

    assert kw.weight is not None
    if isinstance(act.granularity, PerToken):
        acts = quantize_acts_triton(x.reshape(-1, kw.in_features), act.bits, act.group, act.symmetric)
    else:
        acts = quantize_acts(x, act.bits, act.group, act.symmetric, act.granularity, ch_min, ch_max, act.layout)
    return int_linear_triton(acts, kw.weight, None if bias is None else bias.float().contiguous())


def int_linear(
    x: torch.Tensor,
    kw: KernelWeight,
    act: ActQuant,
    bias: torch.Tensor | None = None,
    ch_min: torch.Tensor | None = None,
    ch_max: torch.Tensor | None = None,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
    gate: torch.Tensor | None = None,
    ada_norm: AdaNorm | None = None,
) -> torch.Tensor:
    """``x[..., K]`` through the quantized layer: first ``ada_norm`` (:class:`AdaNorm`) when given,
    applied by the AMX kernel as it quantizes each row; activations quantized by ``act`` (``sample`` and
    ``frame`` ranges by ``act.layout``, the first dimension of ``x`` without one), the integer product on
    ``kw.path``, then either the output ``activation`` (one of :data:`ACTIVATIONS`) or the gated residual
    ``residual + gate * product`` (:func:`gated_residual`: ``residual`` shaped like the output, ``gate``
    one row per sample), fused into the AMX kernel's last epilogue and applied in float32 after the
    product on the other paths; the result has ``x``'s dtype, or with a residual the dtype of
    ``residual + gate * out`` (bfloat16 only if the input, residual and gate all are); the input's
    dtype is ``x``'s, or with ``ada_norm`` that of the transformed input."""
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"unknown output activation {activation!r}; use one of {', '.join(ACTIVATIONS)}")
    if (residual is None) != (gate is None) or (residual is not None and activation is not None):
        raise ValueError("a gated residual needs both residual and gate, and excludes an output activation")
    lead = x.shape[:-1]
    if residual is not None and gate is not None:  # checked before the product
        check_gated_residual((*lead, kw.out_features), residual, gate)
    dtype = x.dtype
    if ada_norm is not None:
        ada_norm.check(x.shape)
        dtype = ada_norm.dtype(x.dtype)
    if kw.path == "amx":
        y = _run_amx(x, kw, act, bias, ch_min, ch_max, activation, residual, gate, ada_norm)
    else:
        if ada_norm is not None:
            x = ada_norm.apply(x)
        run = _run_triton if kw.path == "triton" else _run_torch
        y = apply_activation(run(x, kw, act, bias, ch_min, ch_max).float(), activation)
        if residual is not None and gate is not None:
            y = gated_residual(y.reshape(*lead, kw.out_features), residual.float(), gate.float())
    if residual is not None and gate is not None:
        return y.reshape(*lead, kw.out_features).to(_residual_dtype(dtype, residual, gate))
    return y.reshape(*lead, kw.out_features).to(dtype)


def time_paths(
    x: torch.Tensor, weight: IntWeight, act: ActQuant, bias: torch.Tensor | None = None, repeats: int = 3
) -> dict[str, float]:
    """Seconds per call of every path that can run this product (best of ``repeats``), measured on ``x``."""
    times: dict[str, float] = {}
    for path in available_paths(x.device):
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


_BEST: dict[str, str] = {}


def _choices_file() -> Path:
    from qdit.cachedir import cache_dir

    return cache_dir() / "kernels" / f"choices-{_machine_key()}.json"


def _machine_key() -> str:
    import hashlib
    import platform

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    text = f"{platform.machine()}|{cpu}|{torch.__version__}|{torch.get_num_threads()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _load_choices() -> None:
    if _BEST:
        return
    try:
        saved = json.loads(_choices_file().read_text())
        _BEST.update({str(k): str(v) for k, v in saved.items() if v in PATHS})
    except (OSError, ValueError, AttributeError):
        pass


def _save_choices() -> None:
    path = _choices_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(_BEST, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs a new measurement next time


def best_path(weight: IntWeight, act: ActQuant, device: torch.device | str = "cpu", rows: int = 256) -> str:
    """The faster integer path for this weight's shape and format on ``device``: measured once per
    shape on ``rows`` random activation rows, and remembered (in the qdit cache, per machine, torch
    version and thread count), so later loads do not measure again."""
    device = torch.device(device)
    blk = block_size(weight.in_features, act.group, weight.group)
    paths = [p for p in available_paths(device) if supports(p, blk, device)]
    if len(paths) == 1:
        return paths[0]
    # the granularity by its spelling: these keys are saved in the cache and read back by later versions
    key = "|".join(
        str(v)
        for v in (device.type, weight.in_features, weight.out_features, weight.bits, blk, weight.zero is None,
                  act.bits, act.group, act.symmetric, act.granularity.spelling)
    )  # fmt: skip
    _load_choices()
    if _BEST.get(key) not in paths:
        x = torch.randn(rows, weight.in_features, generator=torch.Generator().manual_seed(0)).to(device)
        # static and frame ranges reach the kernel as sample ranges do (runs of rows or given ranges):
        # time plain per-first-dim sample ranges (no calibration, and any row count fits no layout)
        timed = act
        if not isinstance(act.granularity, PerToken):
            timed = replace(act, granularity=PerSample(), layout=None)
        times = time_paths(x, weight, timed, repeats=3)
        # a path listed earlier (the compiled kernel before the PyTorch fallback) keeps its place unless
        # a later one is clearly faster: one noisy measurement must not pin a slow path in the cache
        best = paths[0]
        for p in paths[1:]:
            if p in times and best in times and times[p] * 1.5 < times[best]:
                best = p
        _BEST[key] = best
        _save_choices()
    return _BEST[key]
