"""``qdit eval SAMPLES.npz --ref REF``: FID, sFID, precision, recall and domain metrics of samples; FVD,
frame accuracy, consistency and motion of clips."""

from __future__ import annotations

import argparse
import time


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="evaluate samples (FID, sFID, precision, recall, domain metrics; FVD and temporal metrics of clips)",
        description=(
            "Evaluate a samples .npz (arr_0 uint8 [N,H,W,C] images or [N,T,H,W,C] clips, labels int64 [N]) "
            "against a reference. Reference statistics are computed once and cached."
        ),
    )
    p.add_argument("samples", metavar="SAMPLES.npz", help="samples file")
    p.add_argument(
        "--ref",
        required=True,
        metavar="REF",
        help="fashion-mnist-test, fashion-mnist-train, fashion-mnist-clips-test, fashion-mnist-clips-train, "
        "or a reference .npz (images or clips in arr_0, or mu/sigma)",
    )
    p.add_argument(
        "--metrics",
        default=None,
        metavar="LIST",
        help="comma-separated, from fid,sfid,is,precision,recall,domain_fd,class_acc,domain_is for images, "
        "fvd,frame_acc,consistency,motion for clips (default: fid,sfid,precision,recall, plus "
        "domain_fd,domain_is,class_acc for 28x28 grayscale samples; fvd,frame_acc,consistency,motion for clips)",
    )
    p.add_argument(
        "--video-features",
        choices=("clipnet", "i3d"),
        default=None,
        help="FVD features: qdit's ClipNet (default; 8x32x32 grayscale clips) or I3D from --i3d",
    )
    p.add_argument(
        "--i3d",
        metavar="PATH",
        default=None,
        help="local I3D weights (pytorch-i3d state dict, .pt or .safetensors; never downloaded); implies "
        "--video-features i3d",
    )
    p.add_argument(
        "--i3d-features",
        choices=("logits", "pool"),
        default="logits",
        help="I3D FVD features: Kinetics-400 logits averaged over time (default, as the original FVD) "
        "or the 1024-d pooled features",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images or clips per batch (default: 50 for Inception, 256 for ClipNet, 4 for I3D)",
    )
    p.add_argument(
        "--inception-mode",
        choices=("fp32", "bf16", "fast", "compile"),
        default=None,
        help="how Inception features are computed: fast (default: the rebuilt net, fp32 stem and bf16 blocks, "
        "about 3x fp32 on CPU; FIDs within 1%% of fp32's), fp32 (the reference), bf16 (the same under "
        "bf16 autocast), compile (fast under torch.compile, after a compile of a minute or more; for thousands "
        "of images). "
        "Reference statistics are cached per mode; compare FIDs only within one mode",
    )
    p.add_argument("--bf16", action="store_true", help="same as --inception-mode bf16")
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
    from qdit.api import evaluate
    from qdit.commands.common import resolve_device
    from qdit.errors import QditError
    from qdit.eval.evaluate import default_metrics, parse_metrics, video_extractor
    from qdit.eval.npz import load_reference, load_samples
    from qdit.io.atomic import check_outputs

    if args.batch_size is not None and args.batch_size < 1:
        raise QditError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.bf16 and args.inception_mode not in (None, "bf16"):
        raise QditError(f"--bf16 and --inception-mode {args.inception_mode} disagree; give one of them")
    from qdit.eval.inception import DEFAULT_MODE

    inception_mode = "bf16" if args.bf16 else (args.inception_mode or DEFAULT_MODE)
    video_features = args.video_features or ("i3d" if args.i3d is not None else "clipnet")
    check_outputs({"--json": args.json}, {"SAMPLES": args.samples, "--ref": args.ref, "--i3d": args.i3d})
    device = resolve_device(args.device)
    requested = parse_metrics(args.metrics) if args.metrics is not None else None
    t0 = time.perf_counter()
    samples = load_samples(args.samples)
    ref = load_reference(args.ref)
    metrics = requested if requested is not None else default_metrics(samples)
    video = None
    if samples.is_video and "fvd" in metrics:
        # built here so that the JSON can name the features' fingerprint; evaluate() checks the request
        video = video_extractor(
            video_features,
            i3d_path=args.i3d,
            i3d_features=args.i3d_features,
            batch_size=args.batch_size,
            device=device,
            progress=not args.no_progress,
        )
    values = evaluate(  # the facade, on the samples and reference loaded above (the report names them)
        samples,
        ref,
        metrics,
        device=device,
        progress=not args.no_progress,
        batch_size=args.batch_size if args.batch_size is not None else 50,
        inception_mode=inception_mode,
        video_features=video_features,
        i3d_path=args.i3d,
        i3d_features=args.i3d_features,
        video=video,
    )
    seconds = time.perf_counter() - t0
    n = samples.images.shape[0]
    print(f"{n} samples {list(samples.images.shape[1:])} vs {ref.source}  ({seconds:.1f} s)")
    print(format_table(values))
    if args.json:
        from qdit.io.atomic import write_json

        report: dict[str, object] = {
            "samples": str(args.samples),
            "num_samples": int(n),
            "ref": ref.source,
            "metrics": values,
        }
        if samples.is_video:
            report["video_features"] = (
                {"name": video.key, "fingerprint": video.fingerprint, "batch_size": video.batch_size}
                if video is not None
                else None
            )
        else:
            report["inception"] = {
                "mode": inception_mode,
                # fast and compile: the stem in float32, the Inception blocks in bfloat16
                "dtype": {"fp32": "float32", "bf16": "bfloat16"}.get(inception_mode, "float32+bfloat16"),
                "batch_size": args.batch_size if args.batch_size is not None else 50,
            }
        report["seconds"] = round(seconds, 3)
        write_json(args.json, report)
    return 0
