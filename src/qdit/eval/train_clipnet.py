"""Train ClipNet (:mod:`qdit.eval.videofeat`) on moving Fashion-MNIST clips and report test accuracies.

``python -m qdit.eval.train_clipnet OUT.safetensors [--steps N] [--minutes M] [--threads 1] [--seed 0]``

Training clips are made on the fly from the train split: a random garment, mirrored left-right with
probability 1/2, moving along a random path (:func:`qdit.data.make_clips`). A fraction of each batch
(``--negatives``) is replaced by clips that do not move like real ones: half of them static (one frame
of the clip repeated), half with their frames shuffled in time; their motion target is uniform over the
8 paths (their class targets stay), so that the motion head is unsure and the clip features differ.
Loss: cross entropy of clip class + motion + per-frame class.

Evaluation: the test split's reference clips (``load_fashion_mnist_clips("test", seed=0)``, 10,000
clips): clip-class, motion and frame-class accuracy, and the mean top motion probability of real, static
and shuffled versions of those clips. Deterministic for a given seed, step count, torch build and CPU
(one thread); ``--minutes`` only stops early (the result then says so and is not the full schedule).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qdit.data import MOTIONS, load_fashion_mnist, load_fashion_mnist_clips, make_clips
from qdit.eval.videofeat import ClipNet, clips_to_input


def corrupt(clips: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``static``: one random frame of each clip repeated; ``shuffled``: each clip's frames in a random
    order that is not the identity."""
    n, t = clips.shape[:2]
    if kind == "static":
        pick = rng.integers(0, t, size=n)
        return np.repeat(clips[np.arange(n), pick][:, None], t, axis=1)
    if kind == "shuffled":
        order = np.argsort(rng.random((n, t)), axis=1)
        same = (order == np.arange(t)).all(axis=1)
        order[same] = order[same][:, ::-1]  # never the original order
        return clips[np.arange(n)[:, None], order]
    raise ValueError(f"unknown corruption {kind!r}")


def make_batch(
    images: np.ndarray, labels: np.ndarray, batch: int, negatives: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clips ``[B, T, 1, 32, 32]``, class labels, motion labels and a mask of the real (moving) clips."""
    idx = rng.integers(0, len(images), size=batch)
    garments = images[idx]
    flip = rng.random(batch) < 0.5
    garments[flip] = garments[flip, :, ::-1]
    motions = rng.integers(0, len(MOTIONS), size=batch)
    clips = make_clips(garments, motions)
    real = rng.random(batch) >= negatives
    fake = np.nonzero(~real)[0]
    half = len(fake) // 2
    clips[fake[:half]] = corrupt(clips[fake[:half]], "static", rng)
    clips[fake[half:]] = corrupt(clips[fake[half:]], "shuffled", rng)
    return (
        clips_to_input(clips),
        torch.from_numpy(labels[idx]),
        torch.from_numpy(motions),
        torch.from_numpy(real),
    )


def loss_fn(
    model: ClipNet, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor, real: torch.Tensor
) -> torch.Tensor:
    out = model(x)
    t = x.shape[1]
    motion_target = torch.full((len(m), len(MOTIONS)), 1.0 / len(MOTIONS))
    motion_target[real] = F.one_hot(m[real], len(MOTIONS)).float()
    return (
        F.cross_entropy(out.class_logits, y)
        + F.cross_entropy(out.motion_logits, motion_target)
        + F.cross_entropy(out.frame_logits.reshape(-1, out.frame_logits.shape[-1]), y.repeat_interleave(t))
    )


@torch.inference_mode()
def evaluate_clipnet(model: ClipNet, data_dir: str | None = None, batch: int = 500, seed: int = 0) -> dict:
    """Accuracies on the test split's reference clips, and the motion head's top probability on real,
    static and shuffled versions of them."""
    clips, labels, motions = load_fashion_mnist_clips("test", data_dir, seed=0)
    rng = np.random.default_rng(seed + 1)
    variants = {
        "real": clips,
        "static": corrupt(clips, "static", rng),
        "shuffled": corrupt(clips, "shuffled", rng),
    }
    model.eval()
    result: dict[str, float] = {}
    for name, data in variants.items():
        cls, mot, frm, conf = [], [], [], []
        for start in range(0, len(data), batch):
            out = model(clips_to_input(data[start : start + batch]))
            cls.append(out.class_logits.argmax(1).numpy())
            mot.append(out.motion_logits.argmax(1).numpy())
            frm.append(out.frame_logits.argmax(2).numpy())
            conf.append(torch.softmax(out.motion_logits, 1).max(1).values.numpy())
        result[f"{name}_motion_confidence"] = float(np.concatenate(conf).mean())
        if name == "real":
            result["clip_class_accuracy"] = float((np.concatenate(cls) == labels).mean())
            result["motion_accuracy"] = float((np.concatenate(mot) == motions).mean())
            result["frame_class_accuracy"] = float((np.concatenate(frm) == labels[:, None]).mean())
    result["test_clips"] = len(clips)
    return result


def train_clipnet(
    out: str | Path,
    *,
    steps: int = 3000,
    minutes: float | None = None,
    batch: int = 64,
    lr: float = 2e-3,
    negatives: float = 0.25,
    seed: int = 0,
    data_dir: str | None = None,
    log_every: int = 100,
) -> dict:
    """Train, evaluate on the test clips, save safetensors to ``out`` (atomically); returns the report."""
    from safetensors.torch import save_file

    from qdit.io.atomic import atomic_path

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images, labels = load_fashion_mnist("train", data_dir)
    model = ClipNet()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    t0 = time.time()
    done = 0
    running = 0.0
    model.train()
    for step in range(steps):
        if minutes is not None and time.time() - t0 > 60 * minutes:
            break
        x, y, m, real = make_batch(images, labels, batch, negatives, rng)
        loss = loss_fn(model, x, y, m, real)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        done = step + 1
        running += loss.item()
        if log_every and done % log_every == 0:
            print(
                f"step {done}/{steps}  loss {running / log_every:.4f}  {time.time() - t0:.0f} s",
                file=sys.stderr,
            )
            running = 0.0
    train_minutes = (time.time() - t0) / 60
    report = evaluate_clipnet(model, data_dir, seed=seed)
    with atomic_path(out, ".safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    report.update(
        steps=done,
        planned_steps=steps,
        stopped_early=done < steps,
        batch=batch,
        lr=lr,
        negatives=negatives,
        seed=seed,
        train_minutes=round(train_minutes, 2),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
    )
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m qdit.eval.train_clipnet", description="train ClipNet")
    p.add_argument("out", metavar="OUT.safetensors")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps (default 3000)")
    p.add_argument("--minutes", type=float, default=None, help="stop early after this many minutes")
    p.add_argument("--batch-size", type=int, default=64, help="clips per step (default 64)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--negatives", type=float, default=0.25, help="fraction of static/shuffled clips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST folder")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch_size < 2 or not 0 <= args.negatives < 1:
        p.error("need --steps >= 1, --batch-size >= 2 and 0 <= --negatives < 1")
    torch.set_num_threads(args.threads)
    report = train_clipnet(
        args.out,
        steps=args.steps,
        minutes=args.minutes,
        batch=args.batch_size,
        lr=args.lr,
        negatives=args.negatives,
        seed=args.seed,
        data_dir=args.data_dir,
    )
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        from qdit.io.atomic import write_json

        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
