"""Write the embedded model's card (docs/embedded_model.md): lineage, steps, loss curve, samples, metrics.

    python scripts/model_card.py training/embedded2 training/embedded3 \
        --metrics training/embedded3/eval_seed0.json training/embedded3/eval_seed1.json [--num 1000]

The runs are the stages of the shipped model, oldest first; each stage warm-starts from the previous
one's EMA weights. The last stage's EMA weights are copied into the package
(src/qdit/assets/embedded_dit.safetensors) unless ``--no-copy``. ``--metrics`` are ``qdit eval --json``
files of the shipped model's samples (Inception FID and the domain metrics), shown in a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from qdit.diffusion.sampler import SamplerConfig, sample_images
from qdit.eval.npz import load_samples
from qdit.models.classifier import images_to_input, load_classifier
from qdit.models.embedded import EMBEDDED_WEIGHTS, asset_path, load_embedded
from qdit.viz import image_grid, line_plot

# The first stage trained from scratch before runs were kept in training/: its log is not in the repo.
FIRST_STAGE = (
    "trained from scratch (`python -m qdit.train runs/embedded --threads 1`): 5,500 steps at batch 128, "
    "lr 5e-4 (constant to step 3,500, then a linear decay to 10% over 2,000 steps), EMA 0.999 then 0.995"
)


def _stage_line(i: int, run: Path, cfg: dict, log: list[dict]) -> str:
    t = cfg["train"]
    steps = log[-1]["step"] if log else 0
    decay = f"linear decay to 10% over the last {t['decay_steps']:,} steps" if t["decay_steps"] else "constant"
    return (
        f"{i}. `{run}`: warm start from stage {i - 1}'s EMA weights (then at `{t['init']}`); {steps:,} steps at batch {t['batch_size']} "
        f"({steps * t['batch_size'] / 60000:.1f} epochs), lr {t['lr']} ({decay}, warm-up {t['warmup_steps']}), "
        f"EMA {t['ema_decay']}, {log[-1]['minutes'] if log else 0:.0f} min on 1 torch thread"
    )


def _metrics_table(paths: list[Path]) -> str:
    rows = []
    for p in paths:
        m = json.loads(p.read_text())
        v = m["metrics"]

        def fmt(key: str, spec: str, v: dict = v) -> str:
            return format(v[key], spec) if key in v else "—"

        rows.append(
            f"| `{p}` | {m['num_samples']} | {fmt('fid', '.2f')} | {fmt('precision', '.3f')} | "
            f"{fmt('recall', '.3f')} | {fmt('class_acc', '.1%')} | {fmt('domain_fd', '.1f')} |"
        )
    head = "| metrics file | samples | Inception FID | precision | recall | class accuracy | domain FD |\n"
    return head + "|---|---|---|---|---|---|---|\n" + "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+", type=Path, help="stage run folders, oldest first")
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--docs", default="docs")
    p.add_argument("--metrics", nargs="*", type=Path, default=[], help="qdit eval --json files")
    p.add_argument("--no-copy", action="store_true", help="do not copy the last stage's EMA into the package")
    p.add_argument("--samples", type=Path, default=None,
                   help="use this `qdit sample --json S.json --out S.npz` output (fp32, seed 0) instead of sampling")
    a = p.parse_args()
    docs = Path(a.docs)
    (docs / "img").mkdir(parents=True, exist_ok=True)
    last = a.runs[-1]
    if not a.no_copy:
        shutil.copyfile(last / "ema.safetensors", asset_path(EMBEDDED_WEIGHTS))
    stages, all_steps, all_loss, offset = [], [], [], 0
    for i, run in enumerate(a.runs, start=2):
        cfg = json.loads((run / "config.json").read_text())
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
        stages.append(_stage_line(i, run, cfg, log))
        all_steps += [offset + r["step"] for r in log]
        all_loss += [r["loss"] for r in log]
        offset += log[-1]["step"] if log else 0
    mcfg = cfg["model"]
    k = 10
    smooth = [float(np.mean(all_loss[max(0, i - k + 1) : i + 1])) for i in range(len(all_loss))]
    line_plot({"loss (50-step mean)": (all_steps, all_loss), "smoothed": (all_steps, smooth)},
              title=f"embedded DiT training loss (stages {', '.join(r.name for r in a.runs)})",
              xlabel="step (from the first kept stage)", log_y=True).save(docs / "img" / "embedded_loss.png")  # fmt: skip

    model = load_embedded()
    if a.samples is not None:
        summary = json.loads(a.samples.with_suffix(".json").read_text())
        if (summary["seed"], summary["steps"], summary["cfg"], summary["precision"]) != (0, 50, 1.5, "fp32"):
            raise SystemExit(f"{a.samples}: the card shows fp32 samples of seed 0, 50 steps, guidance 1.5")
        loaded = load_samples(a.samples)
        images, labels, seconds = loaded.images, loaded.labels, float(summary["seconds"])
        threads = f"`qdit sample`, {summary.get('ranks', 1)} rank(s)"
    else:
        t0 = time.time()
        images, labels = sample_images(
            model, a.num, seed=0, config=SamplerConfig(steps=50, cfg_scale=1.5, clip_denoised=True), progress=True
        )
        seconds = time.time() - t0
        threads = f"{torch.get_num_threads()} threads"
    clf = load_classifier()
    with torch.no_grad():
        pred = torch.cat([clf(b).argmax(1) for b in images_to_input(images).split(500)]).numpy()
    acc = float((pred == labels).mean())
    order = np.argsort(labels[:100] * 1000 + np.arange(100), kind="stable")
    image_grid(images[:100][order].reshape(10, 10, 28, 28, 1).transpose(1, 0, 2, 3, 4).reshape(100, 28, 28, 1),
               nrow=10, scale=3).save(docs / "img" / "embedded_samples.png")  # fmt: skip
    nparams = sum(t.numel() for t in model.parameters())
    size_mb = asset_path(EMBEDDED_WEIGHTS).stat().st_size / 2**20
    total = 5500 + offset
    stage_text = "\n".join(stages)
    metrics = _metrics_table(a.metrics) if a.metrics else "(no `--metrics` files given)"
    card = f"""# The embedded model: a class-conditional DiT on Fashion-MNIST

`--model embedded` loads it from `src/qdit/assets/{EMBEDDED_WEIGHTS}` ({size_mb:.1f} MB, {nparams / 1e6:.2f}M parameters).
Trained by qdit on the 60,000 Fashion-MNIST training images (Debian's `dataset-fashion-mnist`), horizontal
flips, images scaled to [-1, 1], {total:,} steps in all ({total * 128 / 60000:.0f} epochs at batch 128).

| | |
|---|---|
| architecture | DiT, adaLN-Zero, input 28x28x1, patch {mcfg["patch_size"]} ({(28 // mcfg["patch_size"]) ** 2} tokens), hidden {mcfg["hidden_size"]}, depth {mcfg["depth"]}, heads {mcfg["num_heads"]}, MLP ratio 4, learned sigma |
| classes | 10 + the null class (label dropout {mcfg["class_dropout_prob"]}) for classifier-free guidance |
| objective | eps MSE + variational bound for the variance (the DiT/improved-DDPM hybrid loss), linear betas, 1000 steps |
| optimiser | AdamW, batch 128, grad clip 1, bf16 autocast |
| weights shipped | the EMA of the last stage |

Stages (each warm-starts from the previous one's EMA weights, with a fresh optimiser and lr warm-up):

1. {FIRST_STAGE} (the weights shipped until issue 12: Inception FID 48.9, class accuracy 80.4%)
{stage_text}

Loss of the kept stages (the steps count from the start of the first kept stage):

![loss](img/embedded_loss.png)

Samples (50 DDIM steps, guidance 1.5, seed 0; one column per class, T-shirt/top … ankle boot):

![samples](img/embedded_samples.png)

Sampling {len(images)} images (50 DDIM steps, guidance 1.5, seed 0, fp32) took {seconds:.0f} s on {platform.processor() or platform.machine()}
({threads}, on a machine shared with other work); our Fashion-MNIST classifier (`qdit.models.classifier`, never shown generated
images; 91.5% on real test images) labels **{acc:.1%}** of them as their requested class.

Against the Fashion-MNIST test set (`qdit sample --model embedded --num 1000 --steps 50 --cfg 1.5 --seed S
--precision bf16`, then `qdit eval --ref fashion-mnist-test --metrics fid,precision,recall,domain_fd,class_acc`;
1,000 real training images score Inception FID 15.86, see BENCHMARKS.md):

{metrics}

Reproduce: `python scripts/model_card.py {" ".join(str(r) for r in a.runs)} --metrics {" ".join(str(m) for m in a.metrics)}`.
"""
    (docs / "embedded_model.md").write_text(card)
    print(json.dumps({"class_accuracy": acc, "seconds": seconds, "steps": total}))


if __name__ == "__main__":
    main()
