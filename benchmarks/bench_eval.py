"""Time ``qdit eval`` on CPU: Inception features in each mode side by side, their agreement, and metrics.

Images: 2N Fashion-MNIST training images, 28x28 grayscale upsampled to 299x299 as in ``qdit eval``: N
"samples" and N other "reference" images. Each Inception mode (``fp32``, the reference; ``bf16``;
``fast``; ``compile``, see :mod:`qdit.eval.inception`) extracts pool + sFID spatial features of all 2N
images, with the modes interleaved round by round (one batch per torch thread in every mode, then the
next round), so that a busy machine slows every mode alike. Reported per mode:

- ``images_per_s`` / ``ms_per_image`` (wall clock) and ``cpu_images_per_s`` (process CPU time, which a
  busy machine distorts less), ``best_round_images_per_s`` (the fastest round: on a host shared with
  other tenants, what the mode does when the host lets it), ``speedup`` vs ``fp32`` on both; ``compile_s`` (``compile`` mode: the
  first call, excluded from the times; inductor's on-disk cache shortens it in a later process);
- agreement with ``fp32`` on the first ``--agree`` samples: max absolute and relative (Frobenius) error
  of the pool and spatial features;
- ``fid``: FID of the N samples against the N reference images, both in this mode, and its relative
  difference from the ``fp32`` FID (``fid_rel_diff``); ``fid_vs_fp32_ref``: the mode's samples against the
  ``fp32`` statistics of the reference (mixing modes, which ``qdit eval`` never does); the same for sFID.

The host probe of ``qdit bench`` (a bf16 matmul, ~7 ms when the development machine is quiet) is
recorded before and after, so that a run on a busy host can be recognised.

Then the metric times, once (mode-independent): FID, sFID and precision/recall (k=3) of the ``fp32``
sample features against a synthetic 10,000-row reference (the size of the Fashion-MNIST test-set
reference; the sample features repeated with noise, so that its covariance is full rank): the values are
meaningless, only the times count.

Writes a JSON result (``--json``) and prints markdown tables. Usage::

    python benchmarks/bench_eval.py [--num 1000] [--modes fp32,bf16,fast,compile] [--threads 1]
    python benchmarks/bench_eval.py --num 20 --batch-size 10 --agree 10   # smoke test
    python benchmarks/bench_eval.py --quick   # 50 samples, modes fp32, bf16, fast (benchmarks/run_all.py)
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

from qdit.commands.bench import host_probe_ms
from qdit.data import load_fashion_mnist
from qdit.eval.inception import INCEPTION_MODES, InceptionFeatures
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


def time_metrics(pool: np.ndarray, spatial: np.ndarray) -> dict:
    ref_pool = synthetic_reference(pool, REF_ROWS, 0)
    ref_sp = synthetic_reference(spatial, REF_ROWS, 1)
    ref_stats, ref_sp_stats = feature_stats(ref_pool), feature_stats(ref_sp)
    ref_radii = knn_radii(ref_pool, 3)  # cached with the reference statistics in qdit eval
    t0 = time.perf_counter()
    frechet_distance(*feature_stats(pool), *ref_stats)
    t_fid = time.perf_counter() - t0
    frechet_distance(*feature_stats(spatial), *ref_sp_stats)
    t_sfid = time.perf_counter() - t0 - t_fid
    precision_recall(ref_pool, pool, k=3, real_radii=ref_radii)
    t_pr = time.perf_counter() - t0 - t_fid - t_sfid
    return {"fid_s": round(t_fid, 2), "sfid_s": round(t_sfid, 2), "precision_recall_s": round(t_pr, 2)}


def errors(got: np.ndarray, ref: np.ndarray) -> dict:
    return {
        "max_abs": float(np.abs(got - ref).max()),
        "ref_max_abs": float(np.abs(ref).max()),
        "rel": float(np.linalg.norm(got - ref) / np.linalg.norm(ref)),
    }


def fid(a: np.ndarray, b: np.ndarray) -> float:
    return float(frechet_distance(*feature_stats(a), *feature_stats(b)))


def run_modes(images: np.ndarray, modes: list[str], batch_size: int) -> dict[str, dict]:
    """Features of ``images`` in every mode, batches interleaved across modes; wall and CPU times."""
    extractors = {m: InceptionFeatures(mode=m, batch_size=batch_size, progress=False) for m in modes}
    out: dict[str, dict] = {}
    for m, ex in extractors.items():
        t0 = time.perf_counter()
        ex.extract(images[:batch_size], spatial=True)  # warm-up; compile mode compiles here
        out[m] = {"warmup_s": time.perf_counter() - t0, "wall": 0.0, "cpu": 0.0, "pool": [], "spatial": [],
                  "rounds": []}  # fmt: skip
        if m == "compile":
            out[m]["compile_s"] = ex.compile_seconds
            out[m]["compile_error"] = ex.compile_error
    n = images.shape[0]
    # a round gives each mode one batch per torch thread, so that `fast` can run them side by side
    step = batch_size * torch.get_num_threads()
    for start in range(0, n, step):
        chunk = images[start : start + step]
        for m, ex in extractors.items():
            w0, c0 = time.perf_counter(), time.process_time()
            feats = ex.extract(chunk, spatial=True)
            wall = time.perf_counter() - w0
            out[m]["wall"] += wall
            out[m]["rounds"].append(len(chunk) / wall)
            out[m]["cpu"] += time.process_time() - c0
            out[m]["pool"].append(feats.pool)
            out[m]["spatial"].append(feats.spatial)
        print(f"  {min(start + step, n)}/{n} images", file=sys.stderr, flush=True)
    for r in out.values():
        r["pool"], r["spatial"] = np.concatenate(r["pool"]), np.concatenate(r["spatial"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=1000, help="samples, and as many reference images (1000)")
    parser.add_argument(
        "--quick", action="store_true", help="50 samples, no compile mode unless --modes says so"
    )
    parser.add_argument("--modes", default=None, help="comma-separated Inception modes (default: all four)")
    parser.add_argument("--agree", type=int, default=200, help="samples for the feature agreement (200)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/bench_eval.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.num, args.agree = 50, 50
    default_modes = [m for m in INCEPTION_MODES if not (args.quick and m == "compile")]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()] if args.modes else default_modes
    if not modes or not set(modes) <= set(INCEPTION_MODES):
        parser.error(f"--modes takes some of {','.join(INCEPTION_MODES)}")
    if "fp32" not in modes:
        modes.insert(0, "fp32")  # the reference of every comparison
    if args.num < 2 or args.agree < 1 or args.batch_size < 1:
        parser.error("--num must be >= 2, --agree and --batch-size >= 1")

    train, _ = load_fashion_mnist("train")
    idx = np.random.default_rng(0).choice(len(train), 2 * args.num, replace=False)
    images = np.asarray(train[np.sort(idx[: args.num])])
    ref_images = np.asarray(train[np.sort(idx[args.num :])])
    both = np.concatenate([images, ref_images])
    probe_before = host_probe_ms()
    res = run_modes(both, modes, args.batch_size)
    probe_after = host_probe_ms()

    base = res["fp32"]
    n = args.num
    agree = min(args.agree, n)
    base_fid = fid(base["pool"][:n], base["pool"][n:])
    base_sfid = fid(base["spatial"][:n], base["spatial"][n:])
    rows = []
    for m in modes:
        r = res[m]
        pool, sp = r["pool"], r["spatial"]
        f, sf = fid(pool[:n], pool[n:]), fid(sp[:n], sp[n:])
        rows.append(
            {
                "mode": m,
                "num_images": 2 * n,
                "images_per_s": round(2 * n / r["wall"], 2),
                "ms_per_image": round(1000 * r["wall"] / (2 * n), 1),
                "cpu_images_per_s": round(2 * n / r["cpu"], 2),
                # the fastest round: what the mode does when the shared host lets it (rounds interleave)
                "best_round_images_per_s": round(max(r["rounds"]), 2),
                "speedup": round(base["wall"] / r["wall"], 2),
                "cpu_speedup": round(base["cpu"] / r["cpu"], 2),
                "warmup_s": round(r["warmup_s"], 1),
                "compile_s": None if r.get("compile_s") is None else round(r["compile_s"], 1),
                "compile_error": r.get("compile_error"),
                "pool_error": errors(pool[:agree], base["pool"][:agree]),
                "spatial_error": errors(sp[:agree], base["spatial"][:agree]),
                "fid": round(f, 4),
                "fid_rel_diff": round((f - base_fid) / base_fid, 5),
                "fid_vs_fp32_ref": round(fid(pool[:n], base["pool"][n:]), 4),
                "sfid": round(sf, 4),
                "sfid_rel_diff": round((sf - base_sfid) / base_sfid, 5),
                "sfid_vs_fp32_ref": round(fid(sp[:n], base["spatial"][n:]), 4),
            }
        )
    metrics = time_metrics(base["pool"][:n], base["spatial"][:n])
    env = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "host_probe_bf16_matmul_ms": {"before": round(probe_before, 2), "after": round(probe_after, 2)},
    }
    write_json(
        args.json,
        {"benchmark": "eval", "batch_size": args.batch_size, "results": rows, "metrics": metrics, "env": env},
    )
    threads = f"{env['torch_threads']} thread" + ("s" if env["torch_threads"] != 1 else "")
    print(
        f"Inception features of {2 * n} images ({threads}, batch {args.batch_size}, load {env['load_avg_1m']}, "
        f"host probe {probe_before:.1f} / {probe_after:.1f} ms)"
    )
    print(
        "| mode | img/s | best round img/s | ms/img | CPU img/s | speedup (CPU) | compile s | pool max err | pool rel err "
        "| sFID-feat rel err | FID | FID diff | sFID | sFID diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['images_per_s']} | {r['best_round_images_per_s']} | {r['ms_per_image']} | {r['cpu_images_per_s']} | "
            f"{r['speedup']} ({r['cpu_speedup']}) | {r['compile_s'] if r['compile_s'] is not None else '-'} | "
            f"{r['pool_error']['max_abs']:.3g} | {r['pool_error']['rel']:.2e} | {r['spatial_error']['rel']:.2e} | "
            f"{r['fid']:.3f} | {100 * r['fid_rel_diff']:+.2f}% | {r['sfid']:.3f} | {100 * r['sfid_rel_diff']:+.2f}% |"
        )
    print(
        f"metrics of {n} samples vs a {REF_ROWS}-row reference: FID {metrics['fid_s']} s, "
        f"sFID {metrics['sfid_s']} s, precision/recall {metrics['precision_recall_s']} s"
    )
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
