"""Where the time of ``--inception-mode fast`` goes: each stage of the rebuilt Inception net, timed alone.

On one batch of ``--batch-size`` Fashion-MNIST training images at ``--threads`` torch threads (inside
each operation): the input preparation (``to_inception_input`` with ``F.interpolate``, the reference
path, and ``to_inception_input_fast``, the fast modes' matrix resize), every stem layer (fp32), and every
Inception block (bf16), each the best of ``--repeats`` runs on the previous stage's output; the max pools
both through torch and through :func:`qdit.kernels.cpu.max_pool3s2` (the extension's loop, when built).
Milliseconds per image. Also records the host probe of ``qdit bench`` before and after.

    python benchmarks/bench_inception_layers.py [--batch-size 50] [--threads 1] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from qdit.commands.bench import host_probe_ms
from qdit.data import load_fashion_mnist
from qdit.eval.inception import InceptionFeatures, to_inception_input, to_inception_input_fast
from qdit.io.atomic import write_json
from qdit.kernels.cpu import cpu_extension


def best_ms(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    images = torch.from_numpy(load_fashion_mnist("train")[0][: a.batch_size, :, :, None].copy())
    net = InceptionFeatures(mode="fast", progress=False)._fast_net()
    n = a.batch_size
    rows: list[tuple[str, float]] = []
    probe_before = host_probe_ms()
    with torch.inference_mode():
        rows.append(("input: F.interpolate (reference path)", best_ms(
            lambda: to_inception_input(images).contiguous(memory_format=torch.channels_last), a.repeats)))  # fmt: skip
        rows.append(("input: matrix resize (fast)", best_ms(lambda: to_inception_input_fast(images), a.repeats)))
        x = to_inception_input_fast(images)
        for name in ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1"):
            layer = getattr(net, name)
            if name.startswith("pool"):
                y = x
                rows.append((f"{name} (torch max pool)", best_ms(lambda y=y: F.max_pool2d(y, 3, 2), a.repeats)))
            label = f"{name} (extension loop)" if name.startswith("pool") else f"{name} (fp32)"
            rows.append((label, best_ms(lambda layer=layer, y=x: layer(y), a.repeats)))
            x = layer(x)
        x = x.to(net.mixed.conv.conv.weight.dtype)
        for i, block in enumerate(net.blocks()):
            rows.append((f"mixed{'_' + str(i) if i else ''} (bf16)", best_ms(lambda b=block, y=x: b(y), a.repeats)))
            x = block(x)
    probe_after = host_probe_ms()
    per_image = {name: round(ms / n, 3) for name, ms in rows}
    stem = [k for k in per_image if k.startswith(("conv", "pool")) and "torch max pool" not in k]
    blocks = [k for k in per_image if k.startswith("mixed")]
    totals = {
        "stem_ms": round(sum(per_image[k] for k in stem), 2),
        "blocks_ms": round(sum(per_image[k] for k in blocks), 2),
    }
    env = {"torch_threads": a.threads, "batch_size": n, "torch": torch.__version__, "machine": platform.machine(),
           "max_pool_extension": cpu_extension() is not None,
           "host_probe_bf16_matmul_ms": {"before": round(probe_before, 2), "after": round(probe_after, 2)}}  # fmt: skip
    print(f"ms per image, batch {n}, {a.threads} thread(s), host probe {probe_before:.1f} / {probe_after:.1f} ms")
    print("| stage | ms / image |")
    print("|---|---|")
    for name, ms in per_image.items():
        print(f"| {name} | {ms:.2f} |")
    print(f"| stem total (fast path) | {totals['stem_ms']:.2f} |")
    print(f"| blocks total | {totals['blocks_ms']:.2f} |")
    if a.json:
        write_json(a.json, {"benchmark": "inception_layers", "ms_per_image": per_image, "totals": totals,
                            "env": env})  # fmt: skip
    return 0 if np.isfinite(list(per_image.values())).all() else 1


if __name__ == "__main__":
    sys.exit(main())
