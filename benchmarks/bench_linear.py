"""Integer linear layers against bf16 ``F.linear`` at DiT-XL/2 shapes (CPU, 2 threads by default).

Per shape and config, bf16 ``F.linear(x, w, b)`` and ``int_linear(x, kw, act, b)`` (bf16 in, bf16 out,
activation quantization included) are timed interleaved in one process, best of ``--repeats``; the
table gives milliseconds and the speed-up over bf16 (``bf16 ms / path ms``, > 1 is faster).

    PYTHONPATH=src python benchmarks/bench_linear.py [--quick] [--json out.json] [--threads 2]

On a busy machine wall times swing widely; ``--clock thread`` (one thread only) times the calling
thread's CPU time instead, which leaves out the time the thread was not running. The load average is
printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from bench_common import best_times

from qdit.kernels.formats import IntWeight
from qdit.kernels.linear import ActQuant, available_paths, int_linear, prepare_weight
from qdit.quant.weight import quantize_weight

HIDDEN, BATCH, TOKENS = 1152, 8, 256
SHAPES = {  # name: (rows per sample, K, N); rows = BATCH * rows per sample
    "qkv": (TOKENS, HIDDEN, 3 * HIDDEN),
    "proj": (TOKENS, HIDDEN, HIDDEN),
    "fc1": (TOKENS, HIDDEN, 4 * HIDDEN),
    "fc2": (TOKENS, 4 * HIDDEN, HIDDEN),
    "adaLN": (1, HIDDEN, 6 * HIDDEN),
}
CONFIGS = {  # name: (weight bits, weight group, activation group)
    "W8A8 g128": (8, 128, 128),
    "W4A8 g128": (4, 128, 128),
    "W8A8 per-channel": (8, 0, 0),
}


def run(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    if args.clock == "thread" and args.threads != 1:
        raise SystemExit("--clock thread measures one thread: use it with --threads 1")
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    torch.manual_seed(0)
    paths = [p for p in available_paths() if p in args.paths]
    shapes = [s for s in SHAPES if not args.shapes or s in args.shapes]
    configs = [c for c in CONFIGS if not args.configs or c in args.configs]
    grans = args.granularity
    rows = []
    for shape in shapes:
        tokens, k, n = SHAPES[shape]
        x = (torch.randn(BATCH, tokens, k) * (1 + torch.rand(k))).bfloat16()
        w = torch.randn(n, k) / k**0.5
        b = torch.randn(n) * 0.1
        wb, bb = w.bfloat16(), b.bfloat16()
        for cfg in configs:
            bits, wg, ag = CONFIGS[cfg]
            iw = IntWeight.from_qweight(quantize_weight(w, bits, wg, args.sym_weights))
            kws = {p: prepare_weight(iw, ag, p) for p in paths}
            for gran in grans:
                act = ActQuant(8, ag, False, gran)
                fns: dict[str, Callable[[], object]] = {"bf16": partial(F.linear, x, wb, bb)}
                for p in paths:
                    fns[p] = partial(int_linear, x, kws[p], act, bb)
                t = best_times(fns, args.repeats, clock)
                row = {
                    "shape": shape,
                    "M": BATCH * tokens,
                    "K": k,
                    "N": n,
                    "config": cfg,
                    "granularity": gran,
                }
                row.update({f"{p}_ms": t[p] * 1e3 for p in t})
                row.update({f"{p}_speedup": t["bf16"] / t[p] for p in paths})
                rows.append(row)
                print(" ".join(f"{p}={t[p] * 1e3:.3f}ms" for p in t), shape, cfg, gran, flush=True)
    return rows


def table(rows: list[dict], paths: list[str]) -> str:
    head = ["shape", "M x K x N", "config", "act", "bf16 ms"] + [f"{p} ms (x bf16)" for p in paths]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["shape"],
            f"{r['M']}x{r['K']}x{r['N']}",
            r["config"],
            r["granularity"],
            f"{r['bf16_ms']:.3f}",
        ]
        cells += [f"{r[f'{p}_ms']:.3f} ({r[f'{p}_speedup']:.2f}x)" for p in paths if f"{p}_ms" in r]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=None, help="rounds (best of); default 10, 3 with --quick")
    ap.add_argument("--quick", action="store_true", help="fewer rounds, the amx path only, token granularity")
    ap.add_argument("--paths", nargs="+", default=None, help="integer paths to time (default: amx torch)")
    ap.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=None)
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=None)
    ap.add_argument("--granularity", nargs="+", choices=["token", "sample"], default=None)
    ap.add_argument("--sym-weights", action="store_true", help="symmetric weights (default asymmetric)")
    ap.add_argument("--clock", choices=["wall", "thread"], default="wall", help="thread: CPU time, 1 thread")
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args()
    args.repeats = args.repeats or (3 if args.quick else 10)
    args.paths = args.paths or (["amx"] if args.quick else ["amx", "torch"])
    args.granularity = args.granularity or (["token"] if args.quick else ["token", "sample"])
    load_before = os.getloadavg()[0]
    rows = run(args)
    load = (load_before, os.getloadavg()[0])
    paths = [p for p in args.paths if any(f"{p}_ms" in r for r in rows)]
    print()
    print(f"threads={args.threads}, {args.clock} clock, best of {args.repeats}, load average {load[0]:.2f} -> "
          f"{load[1]:.2f} ({os.cpu_count()} CPUs), bf16 in / bf16 out, weights "
          f"{'symmetric' if args.sym_weights else 'asymmetric'}, activations asymmetric 8-bit")  # fmt: skip
    print(table(rows, paths))
    if args.json:
        with open(args.json, "w") as f:
            meta = {"threads": args.threads, "clock": args.clock, "repeats": args.repeats, "loadavg": load}
            json.dump({**meta, "sym_weights": args.sym_weights, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
