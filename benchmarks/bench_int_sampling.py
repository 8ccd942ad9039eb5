"""Does the integer path sample what fake quantization samples? The embedded model quantized W4A8
(group 128, dynamic per-token activations, RTN), sampled through the integer kernels and through fake
quantization with the same seed, scored by the domain Fréchet distance and class accuracy against the
Fashion-MNIST test set. The same through fake quantization with other seeds shows the noise level.

    python benchmarks/bench_int_sampling.py [--num 500] [--steps 20] [--seeds 0,1,2] [--threads 2] [--json PATH]

Every step is a ``qdit`` command (printed), so each can be rerun alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def qdit(*args: str) -> None:
    cmd = [sys.executable, "-m", "qdit", *args]
    print("$ qdit", " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=500)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seeds", default="0,1,2", help="sample seeds; the first is also sampled through integers")
    p.add_argument("--w-bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        q = Path(tmp) / "q"
        qdit("quantize", "--model", "embedded", "--w-bits", str(a.w_bits), "--a-bits", "8",
             "--group-size", str(a.group_size), "--out", str(q))  # fmt: skip
        runs = [("int", seeds[0])] + [("fake", s) for s in seeds]
        for kernel, seed in runs:
            out = Path(tmp) / f"{kernel}_{seed}.npz"
            t0 = time.perf_counter()
            qdit("sample", "--model", str(q), "--kernel", kernel, "--num", str(a.num), "--steps", str(a.steps),
                 "--seed", str(seed), "--out", str(out))  # fmt: skip
            seconds = time.perf_counter() - t0
            metrics = Path(tmp) / f"{kernel}_{seed}.json"
            qdit("eval", str(out), "--ref", "fashion-mnist-test", "--metrics", "domain_fd,class_acc",
                 "--json", str(metrics))  # fmt: skip
            m = json.loads(metrics.read_text())
            vals = m.get("metrics", m)
            rows.append({"kernel": kernel, "seed": seed, "domain_fd": vals["domain_fd"],
                         "class_acc": vals["class_acc"], "sample_seconds": seconds})  # fmt: skip
    print(f"\nembedded, W{a.w_bits}A8 g{a.group_size}, {a.num} samples, {a.steps} DDIM steps, {a.threads} threads")
    print("| path | seed | domain FD | class acc | sampling s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kernel']} | {r['seed']} | {r['domain_fd']:.2f} | {r['class_acc']:.3f} | {r['sample_seconds']:.0f} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "args": vars(a)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
