"""Why the integer kernels fuse DiT's GELU, gated residual and adaLN input: the elementwise steps next
to the linears.

Times, on DiT-XL/2 block shapes (8 images x 256 tokens, hidden 1152, MLP 4608), best of ``--repeats``
with the calls interleaved: torch's tanh GELU in bf16 on fc1's output, the residual step
``x + gate * out`` in bf16, adaLN's ``modulate(layer_norm(x))`` in bf16, a bf16 fc1 matmul for scale,
the W8A8 per-channel integer fc1 with and without the fused GELU, the integer fc2 with and without the
fused gated residual, and the W8A8 group-128 integer qkv with and without the fused adaLN input (the
unfused ones preceded or followed by the torch step they replace).

    python benchmarks/bench_fusion.py [--threads 2] [--repeats 7] [--json benchmarks/results/fusion.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from qdit.commands.bench import time_interleaved
    from qdit.kernels.formats import IntWeight
    from qdit.kernels.linear import ActQuant, AdaNorm, available_paths, best_path, int_linear, prepare_weight
    from qdit.quant.weight import quantize_weight

    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    b, t, d, hidden = 8, 256, 1152, 4608
    x = torch.randn(b, t, d, generator=g).bfloat16()
    h = (torch.randn(b, t, hidden, generator=g) * 2).bfloat16()
    w1 = torch.randn(hidden, d, generator=g) / d**0.5
    w2 = torch.randn(d, hidden, generator=g) / hidden**0.5
    b1, b2 = torch.randn(hidden, generator=g), torch.randn(d, generator=g)
    gate = torch.randn(b, 6 * d, generator=g).bfloat16()[:, 2 * d : 3 * d]
    act = ActQuant(8, 0, False, "token")
    iw1 = IntWeight.from_qweight(quantize_weight(w1, 8, 0, False))
    iw2 = IntWeight.from_qweight(quantize_weight(w2, 8, 0, False))
    k1 = prepare_weight(iw1, 0, best_path(iw1, act))
    k2 = prepare_weight(iw2, 0, best_path(iw2, act))
    w1b, b1b = w1.bfloat16(), b1.bfloat16()
    gelu = torch.nn.GELU(approximate="tanh")
    # qkv at group 128 with adaLN's input: shift and scale are chunks of the block's modulation output
    mod = torch.randn(b, 6 * d, generator=g).bfloat16()
    shift, scale = mod[:, :d], mod[:, d : 2 * d]
    ada = AdaNorm(shift, scale, 1e-6)
    act128 = ActQuant(8, 128, False, "token")
    iw3 = IntWeight.from_qweight(quantize_weight(torch.randn(3 * d, d, generator=g) / d**0.5, 8, 128, False))
    k3 = prepare_weight(iw3, 128, best_path(iw3, act128))
    b3 = torch.randn(3 * d, generator=g)
    calls = {
        "bf16 fc1 matmul": lambda: F.linear(x, w1b, b1b),
        "torch tanh GELU, bf16 [8,256,4608]": lambda: gelu(h),
        "torch x + gate * out, bf16 [8,256,1152]": lambda: x + gate.unsqueeze(1) * x,
        "int fc1": lambda: int_linear(x, k1, act, b1),
        "int fc1 + torch GELU": lambda: gelu(int_linear(x, k1, act, b1)),
        "int fc1, GELU fused": lambda: int_linear(x, k1, act, b1, activation="gelu_tanh"),
        "int fc2 + torch gated residual": lambda: x + gate.unsqueeze(1) * int_linear(h, k2, act, b2),
        "int fc2, gated residual fused": lambda: int_linear(h, k2, act, b2, residual=x, gate=gate),
        "torch modulate(layer_norm(x)), bf16 [8,256,1152]": lambda: ada.apply(x),
        "int qkv g128": lambda: int_linear(x, k3, act128, b3),
        "torch modulate(layer_norm(x)) + int qkv g128": lambda: int_linear(ada.apply(x), k3, act128, b3),
        "int qkv g128, adaLN input fused": lambda: int_linear(x, k3, act128, b3, ada_norm=ada),
    }
    with torch.inference_mode():
        ms = {n: v * 1e3 for n, v in time_interleaved(calls, a.repeats).items()}
    print(f"{a.threads} threads, best of {a.repeats}, integer path {k1.path} (available: {', '.join(available_paths())})")
    print("| step | ms |\n|---|---|")
    for n, v in ms.items():
        print(f"| {n} | {v:.2f} |")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"threads": a.threads, "path": k1.path, "ms": ms}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
