"""``qdit eval SAMPLES.npz --ref REF``: FID, sFID, precision, recall and domain metrics of samples."""

from __future__ import annotations

import argparse
import time


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="evaluate samples (FID, sFID, precision, recall, domain metrics)",
        description=(
            "Evaluate a samples .npz (arr_0 uint8 [N,H,W,C], labels int64 [N]) against a reference. "
            "Reference statistics are computed once and cached."
        ),
    )
    p.add_argument("samples", metavar="SAMPLES.npz", help="samples file")
    p.add_argument(
        "--ref",
        required=True,
        metavar="REF",
        help="fashion-mnist-test, fashion-mnist-train, or a reference .npz (images in arr_0, or mu/sigma)",
    )
    p.add_argument(
        "--metrics",
        default=None,
        metavar="LIST",
        help="comma-separated, from fid,sfid,is,precision,recall,domain_fd,class_acc,domain_is "
        "(default: fid,sfid,precision,recall, plus domain_fd,domain_is,class_acc for 28x28 grayscale samples)",
    )
    p.add_argument("--batch-size", type=int, default=50, help="images per Inception batch (default 50)")
    p.add_argument("--bf16", action="store_true", help="Inception features under bf16 autocast (faster)")
    p.add_argument("--device", default="cpu", help="torch device for feature extraction (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON (atomically)")
    return p


def format_table(metrics: dict[str, float]) -> str:
    width = max(len("metric"), *(len(k) for k in metrics))
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ---------"]
    lines += [f"{k:<{width}}  {v:.4f}" for k, v in metrics.items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from qdit.commands.common import resolve_device
    from qdit.errors import QditError
    from qdit.eval.evaluate import default_metrics, evaluate, parse_metrics
    from qdit.eval.npz import load_reference, load_samples
    from qdit.io.atomic import check_outputs

    if args.batch_size < 1:
        raise QditError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_outputs({"--json": args.json}, {"SAMPLES": args.samples, "--ref": args.ref})
    device = resolve_device(args.device)
    requested = parse_metrics(args.metrics) if args.metrics is not None else None
    t0 = time.perf_counter()
    samples = load_samples(args.samples)
    ref = load_reference(args.ref)
    metrics = requested if requested is not None else default_metrics(samples)
    values = evaluate(
        samples,
        ref,
        metrics,
        batch_size=args.batch_size,
        bf16=args.bf16,
        device=device,
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - t0
    n = samples.images.shape[0]
    print(f"{n} samples {list(samples.images.shape[1:])} vs {ref.source}  ({seconds:.1f} s)")
    print(format_table(values))
    if args.json:
        from qdit.io.atomic import write_json

        write_json(
            args.json,
            {
                "samples": str(args.samples),
                "num_samples": int(n),
                "ref": ref.source,
                "metrics": values,
                "inception": {"dtype": "bfloat16" if args.bf16 else "float32", "batch_size": args.batch_size},
                "seconds": round(seconds, 3),
            },
        )
    return 0
