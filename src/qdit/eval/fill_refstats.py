"""``python -m qdit.eval.fill_refstats fashion-mnist-test [--inception-mode MODE] [--domain]``: fill the reference-statistics
cache (:mod:`qdit.eval.refstats`) ahead of time; for a clips reference (``fashion-mnist-clips-test``, a
clips ``.npz``) the FVD statistics of ClipNet, or of I3D with ``--i3d PATH``.

A module of its own: it uses every feature extractor, and each of them uses :mod:`qdit.eval.refstats`, so
the command cannot live there without an import cycle.
"""

from __future__ import annotations

import argparse
import sys

from qdit.errors import QditError
from qdit.eval.cache import refstats_path
from qdit.eval.domain import DomainFeatures, domain_refstats
from qdit.eval.evaluate import video_extractor
from qdit.eval.inception import INCEPTION_MODES, InceptionFeatures
from qdit.eval.npz import load_reference
from qdit.eval.refstats import inception_refstats
from qdit.eval.video import video_refstats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qdit.eval.fill_refstats", description="fill the reference-statistics cache"
    )
    parser.add_argument(
        "ref",
        help="fashion-mnist-test, fashion-mnist-train, fashion-mnist-clips-test, ... or a reference .npz",
    )
    parser.add_argument("--bf16", action="store_true", help="same as --inception-mode bf16")
    parser.add_argument(
        "--inception-mode",
        choices=INCEPTION_MODES,
        default=None,
        help="fp32 (default here; qdit eval's is fast), bf16, fast or compile (cached per mode)",
    )
    parser.add_argument(
        "--domain", action="store_true", help="domain-classifier statistics instead of Inception"
    )
    parser.add_argument(
        "--i3d", metavar="PATH", help="clips: I3D weights for FVD statistics instead of ClipNet"
    )
    parser.add_argument("--i3d-features", choices=("logits", "pool"), default="logits")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--refresh", action="store_true", help="recompute even if cached")
    args = parser.parse_args(argv)
    try:
        ref = load_reference(args.ref)
        if ref.images is not None and ref.images.ndim == 5:
            vex = video_extractor(
                "i3d" if args.i3d else "clipnet", i3d_path=args.i3d, i3d_features=args.i3d_features
            )
            stats = video_refstats(ref, vex, refresh=args.refresh)
            key = vex.key
        elif args.domain:
            stats = domain_refstats(ref, DomainFeatures(), refresh=args.refresh)
            key = DomainFeatures.name
        else:
            ex = InceptionFeatures(bf16=args.bf16, mode=args.inception_mode, batch_size=args.batch_size)
            stats = inception_refstats(ref, ex, refresh=args.refresh)
            key = ex.key
    except (QditError, OSError, ValueError) as exc:
        print(f"refstats: error: {exc}", file=sys.stderr)
        return 2
    print(f"{ref.name} ({key}): {stats.count} samples, cached in {refstats_path(ref.name, key)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
