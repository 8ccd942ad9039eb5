"""Where bf16 loses accuracy in the rebuilt Inception net (:mod:`qdit.eval.inception_net`), stage by stage.

On ``--num`` Fashion-MNIST training images (upsampled to 299x299), against the folded fp32 net:

- ``only <stage> in bf16``: relative (Frobenius) error of the pool features when that one stage runs in
  bf16 (its input rounded to bf16, bf16 weights) and every other stage in fp32;
- ``fp32 up to <stage>``: the stages up to and including it in fp32, the rest in bf16, with the pool
  error and images per CPU-second (batch ``--batch-size``; the best of ``--repeats``).

``fp32 up to pool1`` is what ``--inception-mode fast`` runs (:meth:`InceptionNet.mixed_precision`).
Usage: ``python benchmarks/bench_inception_precision.py [--num 50] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from qdit.data import load_fashion_mnist
from qdit.eval.inception import InceptionFeatures, to_inception_input
from qdit.eval.inception_net import fold_from_scripted

STAGES = [
    "conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed", "mixed_1", "mixed_2",
    "mixed_3", "mixed_4", "mixed_5", "mixed_6", "mixed_7", "mixed_8", "mixed_9", "mixed_10",
]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train, _ = load_fashion_mnist("train")
    idx = np.sort(np.random.default_rng(1).choice(len(train), args.num, replace=False))
    imgs = torch.from_numpy(np.asarray(train[idx]))
    imgs = imgs[..., None] if imgs.dim() == 3 else imgs
    x = to_inception_input(imgs).contiguous(memory_format=torch.channels_last)
    net32 = fold_from_scripted(InceptionFeatures(progress=False)._layers).to(
        memory_format=torch.channels_last
    )
    net16 = copy.deepcopy(net32).to(torch.bfloat16).to(memory_format=torch.channels_last)

    def run(bf16, xb: torch.Tensor) -> torch.Tensor:
        h = xb
        for s in STAGES:
            h = getattr(net16, s)(h.to(torch.bfloat16)) if bf16(s) else getattr(net32, s)(h.float())
        return F.avg_pool2d(h.float(), 8).flatten(1)

    def pool(bf16) -> torch.Tensor:
        return torch.cat([run(bf16, x[i : i + args.batch_size]) for i in range(0, args.num, args.batch_size)])

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).norm() / b.norm())

    with torch.inference_mode():
        ref = pool(lambda s: False)
        print(f"pool error, {args.num} images; one stage in bf16, the rest fp32")
        for s0 in STAGES:
            print(
                f"  only {s0:9s} in bf16: {100 * rel(pool(lambda s, s0=s0: s == s0), ref):.2f}%", flush=True
            )
        print("fp32 up to a stage, bf16 after: pool error, images per CPU-second")
        xb = x[: args.batch_size]
        for k in range(len(STAGES) + 1):
            bf16 = lambda s, k=k: STAGES.index(s) >= k  # noqa: E731
            err = rel(pool(bf16), ref)
            best = float("inf")
            for _ in range(args.repeats):
                c0 = time.process_time()
                run(bf16, xb)
                best = min(best, time.process_time() - c0)
            name = STAGES[k - 1] if k else "(none: all bf16)"
            print(f"  fp32 up to {name:16s}: {100 * err:5.2f}%  {len(xb) / best:6.2f} img/s CPU", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
