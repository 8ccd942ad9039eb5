"""``qdit train``: train the embedded Fashion-MNIST DiT, the embedded video DiT or the Fashion-MNIST classifier."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train the embedded DiT, the embedded video DiT or the domain classifier (resumable)")
    p.add_argument("what", choices=("embedded", "embedded-video", "classifier"))
    p.add_argument(
        "--out", required=True, help="run folder (embedded, embedded-video) or weights .safetensors (classifier)"
    )
    p.add_argument("--max-steps", type=int, default=8000)
    p.add_argument("--max-minutes", type=float, default=100.0)
    p.add_argument("--batch-size", type=int, default=None, help="default 128 images, 32 clips")
    p.add_argument("--lr", type=float, default=None, help="default 5e-4 (embedded), 3e-4 (embedded-video)")
    p.add_argument("--decay-steps", type=int, default=0, help="linear lr decay to 10%% over the last N steps")
    p.add_argument("--ema-decay", type=float, default=None, help="default 0.999")
    p.add_argument(
        "--init",
        default=None,
        help="warm start from these weights (embedded-video: an image DiT of width 256 gives the spatial "
        "blocks, e.g. src/qdit/assets/embedded_dit.safetensors); ignored when resuming",
    )
    p.add_argument("--epochs", type=int, default=4, help="classifier epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST idx .gz files")
    return p


def run(args: argparse.Namespace) -> int:
    import json

    from qdit.io.atomic import check_outputs

    check_outputs({"--out": args.out}, folders=("--out",) if args.what != "classifier" else ())
    if args.what == "classifier":
        from qdit.models.classifier import train_classifier

        print(
            json.dumps(train_classifier(args.out, epochs=args.epochs, seed=args.seed, data_dir=args.data_dir))
        )
        return 0
    from qdit.models.embedded import EMBEDDED_CONFIG, EMBEDDED_VIDEO_CONFIG
    from qdit.train import TrainConfig, train_embedded

    video = args.what == "embedded-video"
    defaults = TrainConfig()
    cfg = TrainConfig(
        max_steps=args.max_steps, max_minutes=args.max_minutes, seed=args.seed, threads=args.threads,
        batch_size=args.batch_size or (32 if video else defaults.batch_size),
        lr=args.lr if args.lr is not None else (3e-4 if video else defaults.lr),
        decay_steps=args.decay_steps,
        ema_decay=args.ema_decay if args.ema_decay is not None else defaults.ema_decay,
        ema_warmup=video, init=args.init,
    )  # fmt: skip  (validated before the data is read)
    if args.init is not None:
        from pathlib import Path

        from qdit.errors import QditError

        if not Path(args.init).is_file():
            raise QditError(f"--init: no such weights file: {args.init}")
    config = EMBEDDED_VIDEO_CONFIG if video else EMBEDDED_CONFIG
    path = train_embedded(args.out, cfg, config, data_dir=args.data_dir)
    print(f"EMA weights: {path}")
    return 0
