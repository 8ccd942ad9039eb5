"""Is our Inception FID the FID? 1,000 real Fashion-MNIST training images against the test set must
score small, and blurred copies of the same images clearly larger.

The reference is the whole test set (10,000 images; its statistics are computed once and cached, which
is most of the first run's time). Also reports sFID and precision/recall of both sets, and the time
taken. Writes a JSON result (``--json``) and prints a markdown table for BENCHMARKS.md.

    python benchmarks/bench_fid_sanity.py [--num 1000] [--sigma 1.0] [--bf16] [--threads T] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of uint8 ``[N, H, W, C]`` images over H and W."""
    from scipy.ndimage import gaussian_filter

    out = gaussian_filter(images.astype(np.float32), sigma=(0, sigma, sigma, 0))
    return np.clip(out.round(), 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=1000, help="training images (default 1000)")
    p.add_argument("--sigma", type=float, default=1.0, help="Gaussian blur radius in pixels (default 1)")
    p.add_argument("--bf16", action="store_true", help="Inception under bf16 autocast")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import torch

    from qdit.data import load_fashion_mnist
    from qdit.eval.inception import InceptionFeatures
    from qdit.eval.metrics import feature_stats, frechet_distance, precision_recall
    from qdit.eval.npz import load_reference
    from qdit.eval.refstats import inception_refstats
    from qdit.io.atomic import write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    extractor = InceptionFeatures(bf16=args.bf16, progress=True)
    t0 = time.perf_counter()
    ref = inception_refstats(load_reference("fashion-mnist-test"), extractor)
    t_ref = time.perf_counter() - t0

    train, _ = load_fashion_mnist("train")
    rng = np.random.default_rng(args.seed)
    real = train[rng.choice(len(train), args.num, replace=False)]
    if real.ndim == 3:
        real = real[..., None]
    sets = {"real": real, f"blurred (sigma {args.sigma:g})": blur(real, args.sigma)}
    rows = {}
    for name, images in sets.items():
        t1 = time.perf_counter()
        out = extractor.extract(images, spatial=True, desc=name)
        mu, sigma = feature_stats(out.pool)
        mu_s, sigma_s = feature_stats(out.spatial)
        pr = {}
        if ref.features is not None:
            prec, rec = precision_recall(ref.features, out.pool, real_radii=ref.radii)
            pr = {"precision": prec, "recall": rec}
        rows[name] = {
            "fid": float(frechet_distance(mu, sigma, ref.mu, ref.sigma)),
            "sfid": None
            if ref.mu_s is None
            else float(frechet_distance(mu_s, sigma_s, ref.mu_s, ref.sigma_s)),
            **{k: float(v) for k, v in pr.items()},
            "seconds": time.perf_counter() - t1,
        }
    dtype = "bf16" if args.bf16 else "fp32"
    result = {
        "num": args.num,
        "sigma": args.sigma,
        "dtype": dtype,
        "reference": f"fashion-mnist-test ({ref.count} images)",
        "reference_seconds": t_ref,
        "rows": rows,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
    }
    print(f"| images ({args.num} training images, Inception {dtype}) | FID | sFID | precision | recall |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        cells = [
            "—" if r.get(k) is None else f"{r[k]:.3f}" if k in ("precision", "recall") else f"{r[k]:.2f}"
            for k in ("fid", "sfid", "precision", "recall")
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"reference statistics: {t_ref:.0f} s (0 when cached)")
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
