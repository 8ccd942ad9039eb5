"""Time ``qdit eval`` on CPU: Inception features (fp32 and bf16) and metrics for N images.

Samples: N Fashion-MNIST training images (stand-ins for generated samples), 28x28 grayscale upsampled
to 299x299 as in ``qdit eval``. Timed per dtype:

- ``extract``: Inception pool + sFID spatial features of the N images (the dominant cost);
- ``metrics``: FID, sFID and precision/recall (k=3) against a 10,000-row reference, the size of the
  Fashion-MNIST test-set reference. To keep the benchmark short the reference is synthetic (the
  sample features repeated with noise, so its covariance is full rank like a real 10k reference): the
  metric *values* are meaningless, only the times are reported. Computing the real reference statistics
  (10,000 images, with their k-NN radii) is a one-off cost, cached, and is not timed here.

Writes a JSON result (``--json``) and prints markdown table rows. Usage::

    python benchmarks/bench_eval.py [--num 1000] [--dtypes fp32,bf16] [--threads T] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from qdit.data import load_fashion_mnist
from qdit.eval.inception import InceptionFeatures
from qdit.eval.metrics import feature_stats, frechet_distance, knn_radii, precision_recall
from qdit.io.atomic import write_json

REF_ROWS = 10_000


def synthetic_reference(feats: np.ndarray, rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, feats.shape[0], rows)
    scale = feats.std(axis=0, keepdims=True) * 0.5 + 1e-3
    return (feats[idx] + rng.standard_normal((rows, feats.shape[1])).astype(np.float32) * scale).astype(
        np.float32
    )


def bench_one(images: np.ndarray, bf16: bool, batch_size: int) -> dict:
    extractor = InceptionFeatures(bf16=bf16, batch_size=batch_size, progress=True)
    extractor.extract(images[:2], spatial=True, desc="warm-up")  # TorchScript profiling runs
    t0 = time.perf_counter()
    out = extractor.extract(images, spatial=True, desc="bf16" if bf16 else "fp32")
    t_extract = time.perf_counter() - t0
    assert out.spatial is not None
    ref_pool = synthetic_reference(out.pool, REF_ROWS, 0)
    ref_sp = synthetic_reference(out.spatial, REF_ROWS, 1)
    ref_stats, ref_sp_stats = feature_stats(ref_pool), feature_stats(ref_sp)
    ref_radii = knn_radii(ref_pool, 3)  # cached with the reference statistics in qdit eval
    t1 = time.perf_counter()
    frechet_distance(*feature_stats(out.pool), *ref_stats)
    t_fid = time.perf_counter() - t1
    frechet_distance(*feature_stats(out.spatial), *ref_sp_stats)
    t_sfid = time.perf_counter() - t1 - t_fid
    precision_recall(ref_pool, out.pool, k=3, real_radii=ref_radii)
    t_pr = time.perf_counter() - t1 - t_fid - t_sfid
    n = images.shape[0]
    return {
        "dtype": "bf16" if bf16 else "fp32",
        "num_images": n,
        "extract_s": round(t_extract, 2),
        "ms_per_image": round(1000 * t_extract / n, 1),
        "fid_s": round(t_fid, 2),
        "sfid_s": round(t_sfid, 2),
        "precision_recall_s": round(t_pr, 2),
        "total_s": round(t_extract + t_fid + t_sfid + t_pr, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=1000, help="images to evaluate (default 1000)")
    parser.add_argument("--quick", action="store_true", help="100 images")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32,bf16")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/bench_eval.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    num = 100 if args.quick else args.num
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if not set(dtypes) <= {"fp32", "bf16"}:
        parser.error("--dtypes takes fp32 and/or bf16")

    train, _ = load_fashion_mnist("train")
    images = train[np.random.default_rng(0).choice(len(train), num, replace=False)]
    rows = [bench_one(images, d == "bf16", args.batch_size) for d in dtypes]
    env = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    write_json(args.json, {"benchmark": "eval", "results": rows, "env": env})
    threads = f"{env['torch_threads']} thread" + ("s" if env["torch_threads"] != 1 else "")
    print("| benchmark | dtype | images | extract s | ms/img | FID s | sFID s | P/R s | total s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| eval (Inception, {threads}) | {r['dtype']} | {r['num_images']} | "
            f"{r['extract_s']} | {r['ms_per_image']} | {r['fid_s']} | {r['sfid_s']} | "
            f"{r['precision_recall_s']} | {r['total_s']} |"
        )
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
