"""Two builds of the CPU kernel (``csrc/qdit_cpu.cpp``) against each other and against bf16, interleaved.

``old`` is the kernel source at a git ref (default ``main``), built into its own qdit cache folder when
it is not built yet; ``new`` is the working tree's build (``python -m qdit.kernels.cpu``). Both are loaded
into this one process, and per DiT-XL/2 shape and config ``F.linear`` in bf16, the old and the new
``amx_linear_x`` (activation quantization fused, bf16 in and out) are called in turn, best of
``--repeats``. Both builds must share the weight layout (the new build prepares the weights).

    PYTHONPATH=src python benchmarks/bench_kernel_ab.py [--old main] [--threads 2] [--repeats 10]

``--parts`` also times the activation quantizer (``quantize_act``) and the product alone
(``amx_linear``) of each build. ``--clock thread`` (one thread only) times the calling thread's CPU time,
which leaves out the time it was not running on a busy machine.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from bench_common import best_times

from qdit.kernels import cpu
from qdit.kernels.formats import IntWeight
from qdit.kernels.linear import _pairs, prepare_weight
from qdit.quant.weight import quantize_weight

M = 8 * 256
SHAPES = {"qkv": (1152, 3456), "proj": (1152, 1152), "fc1": (1152, 4608), "fc2": (4608, 1152)}
CONFIGS = {"W8A8 g128": (8, 128), "W4A8 g128": (4, 128), "W8A8 per-channel": (8, 0)}
REPO = Path(__file__).resolve().parent.parent


def _load(lib: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(cpu.NAME, lib)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def old_extension(ref: str) -> ModuleType:
    """The kernel source at git ``ref``, built (once) into the qdit cache as ``cpu.build`` would."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{ref}:src/qdit/kernels/csrc/qdit_cpu.cpp"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    digest = hashlib.sha256(source + torch.__version__.encode()).hexdigest()[:16]
    folder = cpu.cache_dir() / "ext" / f"{cpu.NAME}-{digest}"
    lib = cpu._built_library(folder)
    if lib is None:
        from torch.utils.cpp_extension import load

        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "qdit_cpu.cpp"
            src.write_bytes(source)
            load(name=cpu.NAME, sources=[str(src)], extra_cflags=cpu.CFLAGS, extra_ldflags=["-fopenmp"],
                 build_directory=str(folder))  # fmt: skip
        lib = cpu._built_library(folder)
        assert lib is not None
    return _load(lib)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", default="main", help="git ref of the old kernel source (default main)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--parts", action="store_true", help="also time quantize_act and amx_linear alone")
    ap.add_argument("--clock", choices=["wall", "thread"], default="wall")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.clock == "thread" and args.threads != 1:
        raise SystemExit("--clock thread measures one thread: use it with --threads 1")
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    new = cpu.cpu_extension()
    if new is None:
        raise SystemExit("the working tree's kernel is not built (python -m qdit.kernels.cpu) or no AMX here")
    exts = {"old": old_extension(args.old), "new": new}
    load_before = os.getloadavg()[0]
    rows = []
    for shape in args.shapes:
        k, n = SHAPES[shape]
        torch.manual_seed(0)
        x = (torch.randn(M, k) * (1 + torch.rand(k))).bfloat16()
        w = torch.randn(n, k) / k**0.5
        b = torch.randn(n) * 0.1
        wb, bb = w.bfloat16(), b.bfloat16()
        for cfg in args.configs:
            bits, group = CONFIGS[cfg]
            kw = prepare_weight(IntWeight.from_qweight(quantize_weight(w, bits, group, False)), group, "amx")
            wargs = (
                kw.stream,
                kw.bits,
                kw.pack4,
                n,
                kw.block,
                kw.kstep,
                kw.sw,
                *_pairs(kw),
                b,
                torch.bfloat16,
            )
            qargs = (x, group, 8, False, kw.block, kw.kstep, 0, None, None)
            fns: dict[str, Callable[[], object]] = {"bf16": partial(F.linear, x, wb, bb)}
            for name, ext in exts.items():
                fns[name] = partial(ext.amx_linear_x, x, group, 8, False, 0, None, None, *wargs)
                if args.parts:
                    fns[f"{name} quant"] = partial(ext.quantize_act, *qargs)
                    fns[f"{name} mm"] = partial(ext.amx_linear, M, ext.quantize_act(*qargs), *wargs)
            ys = {name: fns[name]() for name in exts}
            if not torch.equal(ys["old"], ys["new"]):
                diff = (ys["old"].float() - ys["new"].float()).abs().max().item()
                print(f"  note: old and new outputs differ by up to {diff:.3g} ({shape}, {cfg})")
            best = best_times(fns, args.repeats, clock)
            rows.append((shape, cfg, best))
            print(
                f"{shape:5s} {cfg:17s}", " ".join(f"{p}={t * 1e3:.2f}ms" for p, t in best.items()), flush=True
            )
    print()
    print(f"threads={args.threads}, {args.clock} clock, best of {args.repeats}, load average {load_before:.2f} -> "
          f"{os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs), M={M}, old = {args.old}, new = working tree")  # fmt: skip
    print("| shape | config | bf16 ms | old ms (x bf16) | new ms (x bf16) | new vs old |")
    print("|---|---|---|---|---|---|")
    for shape, cfg, t in rows:
        print(f"| {shape} | {cfg} | {t['bf16'] * 1e3:.2f} | {t['old'] * 1e3:.2f} ({t['bf16'] / t['old']:.2f}x) | "
              f"{t['new'] * 1e3:.2f} ({t['bf16'] / t['new']:.2f}x) | {t['old'] / t['new']:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
