"""``qdit train``: train the embedded Fashion-MNIST DiT or the Fashion-MNIST classifier."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train the embedded DiT or the domain classifier (resumable)")
    p.add_argument("what", choices=("embedded", "classifier"))
    p.add_argument("--out", required=True, help="run folder (embedded) or weights .safetensors (classifier)")
    p.add_argument("--max-steps", type=int, default=8000)
    p.add_argument("--max-minutes", type=float, default=100.0)
    p.add_argument("--epochs", type=int, default=4, help="classifier epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST idx .gz files")
    return p


def run(args: argparse.Namespace) -> int:
    import json

    from qdit.io.atomic import check_outputs

    check_outputs({"--out": args.out}, folders=("--out",) if args.what == "embedded" else ())
    if args.what == "classifier":
        from qdit.models.classifier import train_classifier

        print(
            json.dumps(train_classifier(args.out, epochs=args.epochs, seed=args.seed, data_dir=args.data_dir))
        )
        return 0
    from qdit.train import TrainConfig, train_embedded

    cfg = TrainConfig(
        max_steps=args.max_steps, max_minutes=args.max_minutes, seed=args.seed, threads=args.threads
    )  # validated before the data is read
    path = train_embedded(args.out, cfg, data_dir=args.data_dir)
    print(f"EMA weights: {path}")
    return 0
