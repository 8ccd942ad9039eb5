"""Check and time the Triton integer linear against bf16 ``F.linear`` at DiT-XL/2 shapes (CUDA only).

For each (K, N) of a DiT-XL/2 block (qkv 1152->3456, attention out 1152->1152, MLP 1152->4608 and
4608->1152) with M = 8 images x 256 tokens = 2048 rows, and for W8A8 and W4A8 (4-bit weights packed) in
groups of 128 and per channel (activations per token, in the same groups):

* checks: the activation codes of ``quantize_acts_triton`` against ``quantize_acts`` on the CPU (bit
  for bit), and ``int_linear_triton`` against ``int_linear_reference`` on the GPU (relative error of
  at most 1e-5 of the output's max |y|);
* times (``triton.testing.do_bench``, median ms): bf16 ``F.linear``; the Triton path end to end
  (activation quantization of the bf16 input + integer product); and its two parts alone.

The first call of each shape autotunes the product kernel (not timed). Weights are asymmetric; the
benchmark does not need symmetric ones to exercise the kernel (the tests cover both).

Writes JSON (``--json``) and prints markdown table rows. Exits 0 with a one-line message when there is
no CUDA device or no Triton; exits 1 when a check fails. Usage::

    python benchmarks/bench_triton.py [--tokens 2048] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from qdit.kernels.formats import IntWeight, quantize_acts
from qdit.kernels.reference import int_linear_reference
from qdit.kernels.triton_kernels import int_linear_triton, quantize_acts_triton, triton_available
from qdit.quant.weight import quantize_weight

SHAPES = [(1152, 3456), (1152, 1152), (1152, 4608), (4608, 1152)]  # (K, N) of a DiT-XL/2 block
SCHEMES = [(8, 128), (8, 0), (4, 128), (4, 0)]  # (weight bits, group; 0 = per channel)
TOL = 1e-5


def check_and_time(m: int, k: int, n: int, wbits: int, group: int, seed: int = 0) -> dict:
    from triton.testing import do_bench

    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(m, k, generator=g) + 0.1 * torch.randn(k, generator=g)).to("cuda", torch.bfloat16)
    w = torch.randn(n, k, generator=g) * k**-0.5
    bias = (torch.randn(n, generator=g) * 0.1).cuda()
    weight = IntWeight.from_qweight(quantize_weight(w, wbits, group)).to_fn(lambda t: t.cuda())

    acts = quantize_acts_triton(x, 8, group, False)
    want = quantize_acts(x.cpu(), 8, group, False)
    code_mismatch = int((acts.codes.cpu() != want.codes).sum())
    scale_mismatch = int((acts.scale.cpu() != want.scale).sum())
    # informational: torch on CUDA divides by the Python number 2^b - 1 via its reciprocal, so its
    # scales may differ from the CPU's (and the kernel's) by an ulp
    cuda_scale_mismatch = int((quantize_acts(x, 8, group, False).scale != acts.scale).sum())

    y = int_linear_triton(acts, weight, bias)  # autotunes on the first call of a shape
    ref = int_linear_reference(acts, weight, bias)
    rel_err = ((y - ref).abs().max() / ref.abs().max()).item()

    wb, bb = w.to("cuda", torch.bfloat16), bias.to(torch.bfloat16)
    ms_bf16 = do_bench(lambda: F.linear(x, wb, bb))
    ms_quant = do_bench(lambda: quantize_acts_triton(x, 8, group, False))
    ms_matmul = do_bench(lambda: int_linear_triton(acts, weight, bias))
    ms_total = do_bench(lambda: int_linear_triton(quantize_acts_triton(x, 8, group, False), weight, bias))
    ops = 2.0 * m * n * k
    return {
        "M": m,
        "K": k,
        "N": n,
        "w_bits": wbits,
        "group": group,
        "packed": weight.packed,
        "act_code_mismatch": code_mismatch,
        "act_scale_mismatch": scale_mismatch,
        "torch_cuda_act_scale_mismatch": cuda_scale_mismatch,
        "rel_err": rel_err,
        "ok": code_mismatch == 0 and scale_mismatch == 0 and rel_err <= TOL,
        "ms_bf16_linear": ms_bf16,
        "ms_triton_total": ms_total,
        "ms_triton_quant_acts": ms_quant,
        "ms_triton_int_linear": ms_matmul,
        "speedup_total_vs_bf16": ms_bf16 / ms_total,
        "speedup_int_linear_vs_bf16": ms_bf16 / ms_matmul,
        "tops_int_linear": ops / ms_matmul * 1e-9,
        "tflops_bf16": ops / ms_bf16 * 1e-9,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8 * 256, help="rows M (images x tokens)")
    parser.add_argument("--quick", action="store_true", help="only the first shape")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_triton: no CUDA device; nothing to benchmark")
        return 0
    if not triton_available():
        print("bench_triton: triton is not installed; nothing to benchmark")
        return 0

    rows = []
    print("| K | N | weights | group | max rel err | act codes | bf16 ms | int ms | quant+int ms | speedup |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k, n in SHAPES[:1] if args.quick else SHAPES:
        for wbits, group in SCHEMES:
            r = check_and_time(args.tokens, k, n, wbits, group)
            rows.append(r)
            print(
                f"| {k} | {n} | W{wbits}A8 | {group or 'channel'} | {r['rel_err']:.1e} "
                f"| {'exact' if r['act_code_mismatch'] == 0 else r['act_code_mismatch']} "
                f"| {r['ms_bf16_linear']:.3f} | {r['ms_triton_int_linear']:.3f} | {r['ms_triton_total']:.3f} "
                f"| {r['speedup_total_vs_bf16']:.2f}x |",
                flush=True,
            )
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
        "tolerance": TOL,
        "all_ok": all(r["ok"] for r in rows),
        "results": rows,
    }
    if args.json:
        from qdit.io.atomic import write_json

        write_json(args.json, result)
    if not result["all_ok"]:
        print("bench_triton: a correctness check failed (see rel_err / act_*_mismatch)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
