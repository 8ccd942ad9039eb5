"""Write the embedded model's card (docs/embedded_model.md): config, steps, wall time, loss curve, samples.

    python scripts/model_card.py runs/embedded [--num 1000]

Copies the run's EMA weights into the package (src/qdit/assets/embedded_dit.safetensors) first.
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
from qdit.models.classifier import images_to_input, load_classifier
from qdit.models.embedded import EMBEDDED_WEIGHTS, asset_path, load_embedded
from qdit.viz import image_grid, line_plot


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--docs", default="docs")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema", help="ship the EMA or the raw weights")
    a = p.parse_args()
    run = Path(a.run_dir)
    docs = Path(a.docs)
    (docs / "img").mkdir(parents=True, exist_ok=True)
    if a.weights == "ema":
        shutil.copyfile(run / "ema.safetensors", asset_path(EMBEDDED_WEIGHTS))
    else:
        from safetensors.torch import save_file

        state = torch.load(run / "state.pt", map_location="cpu", weights_only=True)["model"]
        save_file({k: v.contiguous() for k, v in state.items()}, str(asset_path(EMBEDDED_WEIGHTS)))
    cfg = json.loads((run / "config.json").read_text())
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in log]
    loss = [r["loss"] for r in log]
    k = 10
    smooth = [float(np.mean(loss[max(0, i - k + 1) : i + 1])) for i in range(len(loss))]
    line_plot({"loss (50-step mean)": (steps, loss), "smoothed": (steps, smooth)}, title="embedded DiT training loss",
              xlabel="step", log_y=True).save(docs / "img" / "embedded_loss.png")  # fmt: skip

    model = load_embedded()
    t0 = time.time()
    images, labels = sample_images(
        model, a.num, seed=0, config=SamplerConfig(steps=50, cfg_scale=1.5, clip_denoised=True), progress=True
    )
    seconds = time.time() - t0
    clf = load_classifier()
    with torch.no_grad():
        pred = torch.cat([clf(b).argmax(1) for b in images_to_input(images).split(500)]).numpy()
    acc = float((pred == labels).mean())
    order = np.argsort(labels[:100] * 1000 + np.arange(100), kind="stable")
    image_grid(images[:100][order].reshape(10, 10, 28, 28, 1).transpose(1, 0, 2, 3, 4).reshape(100, 28, 28, 1),
               nrow=10, scale=3).save(docs / "img" / "embedded_samples.png")  # fmt: skip
    nparams = sum(t.numel() for t in model.parameters())
    size_mb = asset_path(EMBEDDED_WEIGHTS).stat().st_size / 2**20
    card = f"""# The embedded model: a class-conditional DiT on Fashion-MNIST

`--model embedded` loads it from `src/qdit/assets/{EMBEDDED_WEIGHTS}` ({size_mb:.1f} MB, {nparams / 1e6:.2f}M parameters).
Trained by qdit from scratch (`qdit train embedded --out runs/embedded`, seed {cfg["train"]["seed"]}) on the 60,000
Fashion-MNIST training images (Debian's `dataset-fashion-mnist`), horizontal flips, images scaled to [-1, 1].

| | |
|---|---|
| architecture | DiT, adaLN-Zero, input 28x28x1, patch {cfg["model"]["patch_size"]} ({(28 // cfg["model"]["patch_size"]) ** 2} tokens), hidden {cfg["model"]["hidden_size"]}, depth {cfg["model"]["depth"]}, heads {cfg["model"]["num_heads"]}, MLP ratio 4, learned sigma |
| classes | 10 + the null class (label dropout {cfg["model"]["class_dropout_prob"]}) for classifier-free guidance |
| objective | eps MSE + variational bound for the variance (the DiT/improved-DDPM hybrid loss), linear betas, 1000 steps |
| optimiser | AdamW lr {cfg["train"]["lr"]}, warm-up {cfg["train"]["warmup_steps"]} steps, linear decay to 10% over the last {cfg["train"]["decay_steps"]} steps, batch {cfg["train"]["batch_size"]}, grad clip 1, bf16 autocast |
| weights shipped | {"EMA (decay " + str(cfg["train"]["ema_decay"]) + ")" if a.weights == "ema" else "the raw (non-EMA) weights"} |
| steps | {steps[-1] if steps else 0} ({steps[-1] * cfg["train"]["batch_size"] / 60000 if steps else 0:.1f} epochs) |
| wall time | {log[-1]["minutes"] if log else 0:.0f} min on 2 CPU cores shared with other work (1 torch thread) |

History of the run: it was started as `python -m qdit.train runs/embedded --max-steps 8000 --max-minutes 100
--threads 1` (constant lr, EMA 0.999). At step 3500 it was resumed with `--max-steps 5500 --decay-steps 2000
--ema-decay 0.995 --max-minutes 140`: in a run this short, EMA 0.999 lagged far behind the weights (the
adaLN-Zero modulations grow from zero), and the lr decay gives the same smoothing without the lag.

Loss curve:

![loss](img/embedded_loss.png)

Samples (50 DDIM steps, guidance 1.5, seed 0; one column per class, T-shirt/top … ankle boot):

![samples](img/embedded_samples.png)

Sampling {a.num} images (50 DDIM steps, guidance 1.5, seed 0) took {seconds:.0f} s on {platform.processor() or platform.machine()}
({torch.get_num_threads()} threads); our Fashion-MNIST classifier (`qdit.models.classifier`, never shown generated
images) labels **{acc:.1%}** of them as their requested class. Reproduce: `python scripts/model_card.py runs/embedded`.
"""
    (docs / "embedded_model.md").write_text(card)
    print(json.dumps({"class_accuracy": acc, "seconds": seconds, "steps": steps[-1] if steps else 0}))


if __name__ == "__main__":
    main()
