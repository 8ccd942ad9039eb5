"""Write the embedded video model's card (docs/embedded_video_model.md): config, training, loss curve,
sample frames and GIF, and the video metrics of its samples beside those of real clips.

    python scripts/video_model_card.py runs/video1 [--num 100] [--steps 50] [--threads 2]

Writes the run's EMA weights into the package first, in fp16 (src/qdit/assets/embedded_video_dit.safetensors,
see scripts/export_asset.py), then samples through ``qdit sample --model embedded-video`` and scores with
``qdit eval`` (every step a command that can be rerun alone).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / "src" / "qdit" / "assets" / "embedded_video_dit.safetensors"


def run(*args: str) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run(list(args), check=True)


def qdit(*args: str) -> None:
    run(sys.executable, "-m", "qdit", *args)


def real_metrics(num: int) -> dict[str, float]:
    """The same metrics on ``num`` real test-split clips (the reference is the test set itself, so
    this row's FVD is computed against the training-split clips instead)."""
    from qdit.data import load_fashion_mnist_clips
    from qdit.eval.npz import load_reference
    from qdit.eval.video import video_metrics
    from qdit.eval.videofeat import VideoFeatures

    clips, labels, _ = load_fashion_mnist_clips("test", seed=1, num=num)
    feats = VideoFeatures(progress=False)
    out = video_metrics(clips[..., None], labels, load_reference("fashion-mnist-clips-train"),
                        features=feats, clipnet=feats)  # fmt: skip
    return {k: float(v) for k, v in out.items()}


def log_rows(log: Path) -> list[dict]:
    """The run's log, one row per step: a run killed between checkpoints and resumed logs the steps after
    its last checkpoint twice, and the later row (the run that continued) is the one that counts."""
    rows: dict[int, dict] = {}
    for line in log.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows.pop(r["step"], None)
            rows[r["step"]] = r
    return sorted(rows.values(), key=lambda r: r["step"])


def loss_plot(log: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = log_rows(log)
    steps = [r["step"] for r in rows]
    loss = [r["loss"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(steps, loss, lw=1)
    ax.set_xlabel("training step (batch of 32 clips)")
    ax.set_ylabel("training loss (mean of 50 steps)")
    ax.set_ylim(0, min(0.1, max(loss) * 1.05))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--num", type=int, default=100)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--docs", default=str(ROOT / "docs"))
    a = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    run_dir, docs = Path(a.run_dir), Path(a.docs)
    (docs / "img").mkdir(parents=True, exist_ok=True)
    run(sys.executable, str(ROOT / "scripts" / "export_asset.py"), str(run_dir / "ema.safetensors"), str(ASSET))
    config = json.loads((run_dir / "config.json").read_text())
    rows = log_rows(run_dir / "log.jsonl")
    last = rows[-1] if rows else {"step": 0, "minutes": 0.0}
    loss_plot(run_dir / "log.jsonl", docs / "img" / "embedded_video_loss.png")
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"qdit-video-card-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    clips = tmp / "clips.npz"
    t0 = time.perf_counter()
    qdit("sample", "--model", "embedded-video", "-n", str(a.num), "--steps", str(a.steps), "--seed", str(a.seed),
         "--precision", a.precision, "--out", str(clips), "--grid", str(docs / "img" / "embedded_video_frames.png"), "--grid-num", "10",
         "--gif", str(docs / "img" / "embedded_video_samples.gif"))  # fmt: skip
    seconds = time.perf_counter() - t0
    metrics_json = tmp / "metrics.json"
    qdit("eval", str(clips), "--ref", "fashion-mnist-clips-test", "--no-progress", "--json", str(metrics_json))
    data = json.loads(metrics_json.read_text())
    sampled = {k: float(v) for k, v in data.get("metrics", data).items() if isinstance(v, (int, float))}
    real = real_metrics(a.num)
    with np.load(clips) as f:
        shape = list(f["arr_0"].shape)
    model = config["model"]
    train = config["train"]
    decay = (f" (linear decay to 10% over steps {train['max_steps'] - train['decay_steps']}-{train['max_steps']}; "
             f"stopped at step {last['step']} with lr {last.get('lr', float('nan')):.2g})") if train.get("decay_steps") else ""
    card = f"""# The embedded video model

A Latte-style video DiT (`qdit.models.latte.VideoDiT`) trained by qdit on clips made deterministically
from Fashion-MNIST (`qdit.data.make_clips`): a garment on a 32x32 black canvas moves 4 px out along
one of 8 paths and back, 1 px per frame, over 8 frames. Spatial blocks (even) attend over the 64 patches
of a frame, temporal blocks (odd) over the 8 frames of a patch; class-conditional with adaLN-Zero and a
learned variance. Warm-started from the embedded image DiT (its blocks became the spatial blocks), as
Latte does. Weights ship in fp16 (`src/qdit/assets/embedded_video_dit.safetensors`, {ASSET.stat().st_size / 2**20:.1f} MiB).

- config: {json.dumps(model)}
- training: {last['step']} steps of {train['batch_size']} clips, lr {train['lr']}{decay}, EMA {train['ema_decay']}
  (with warm-up: {train.get('ema_warmup', False)}), {last.get('minutes', 0):.0f} minutes of one CPU thread
  (`python -m qdit.train RUN --video --init IMAGE_DIT ...`, see README; it resumes from RUN/state.pt)
- regenerate this card: `python scripts/video_model_card.py {run_dir} --num {a.num} --steps {a.steps}`
  ({platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')})

![loss](img/embedded_video_loss.png)

## Samples

{a.num} clips `{shape}` (classes balanced, {a.steps} DDIM steps, CFG 1.5, seed {a.seed}, {a.precision}), sampled in
{seconds:.0f} s with {a.threads} threads. Rows of the frame grid are clips, frames run across.

![frames](img/embedded_video_frames.png)

![clips](img/embedded_video_samples.gif)

| | FVD (ClipNet) | frame acc | consistency | motion |
|---|---|---|---|---|
| samples vs test clips | {sampled.get('fvd', float('nan')):.2f} | {sampled.get('frame_acc', float('nan')):.3f} | {sampled.get('consistency', float('nan')):.4f} | {sampled.get('motion', float('nan')):.4f} |
| {a.num} real test clips vs train clips | {real['fvd']:.2f} | {real['frame_acc']:.3f} | {real['consistency']:.4f} | {real['motion']:.4f} |

frame acc: ClipNet's per-frame class head agrees with the requested class; consistency: VBench-style
subject consistency of ClipNet frame features; motion: mean absolute frame-to-frame change (pixels in
[0, 1]); see `qdit eval` in the README. FVD grows at small sample counts: compare rows of equal counts.
"""
    (docs / "embedded_video_model.md").write_text(card)
    print(f"wrote {docs / 'embedded_video_model.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
