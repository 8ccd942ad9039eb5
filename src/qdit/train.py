"""Training the embedded Fashion-MNIST DiT and video DiT (resumable, checkpointed, time-boxed)."""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from qdit.data import load_fashion_mnist
from qdit.diffusion.schedule import GaussianDiffusion
from qdit.models.dit import DiT, DiTConfig
from qdit.models.embedded import EMBEDDED_CONFIG
from qdit.models.latte import VideoDiT, VideoDiTConfig
from qdit.quant.finite import check_finite_number


@dataclass
class TrainConfig:
    max_steps: int = 8000
    max_minutes: float = 105.0
    batch_size: int = 128
    lr: float = 5e-4
    warmup_steps: int = 200
    decay_steps: int = 0  # linear decay of the lr to 10% over the last decay_steps before max_steps
    ema_decay: float = 0.999
    # EMA decay min(ema_decay, (1 + step) / (10 + step)): the average follows the model closely at first,
    # so an EMA started from weights that do not fit the task (a warm start with new blocks) is usable
    # after hundreds of steps instead of thousands
    ema_warmup: bool = False
    seed: int = 0
    bf16: bool = True
    flip: bool = True
    log_every: int = 50
    ckpt_every: int = 250
    threads: int = 0  # 0 = torch default
    init: str | None = None  # warm start: weights (.safetensors) loaded into model and EMA before step 0

    def __post_init__(self) -> None:
        for name in ("max_minutes", "lr", "ema_decay"):
            check_finite_number(getattr(self, name), name)
        if self.max_steps < 1 or self.batch_size < 1 or self.warmup_steps < 1 or self.max_minutes <= 0:
            raise ValueError("max_steps, batch_size and warmup_steps must be >= 1 and max_minutes > 0")
        if self.lr <= 0 or not 0 <= self.ema_decay < 1:
            raise ValueError(f"lr must be > 0 and ema_decay in [0, 1), got {self.lr} and {self.ema_decay}")


def _atomic_save(obj: object, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_embedded(
    out_dir: str | Path,
    config: TrainConfig | None = None,
    model_config: DiTConfig | VideoDiTConfig = EMBEDDED_CONFIG,
    data_dir: str | None = None,
) -> Path:
    """Train (or resume) in ``out_dir``; writes ``state.pt`` checkpoints, ``log.jsonl`` and ``ema.safetensors``.

    With a :class:`VideoDiTConfig` the model is the video DiT, trained on clips of a garment moving along
    one of the paths of :data:`qdit.data.MOTIONS` (drawn per sample); ``init`` may then be an image DiT of
    the same width, whose blocks become the spatial blocks (Latte's warm start).
    """
    cfg = config or TrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    video = isinstance(model_config, VideoDiTConfig)
    images, labels = load_fashion_mnist("train", data_dir)
    y_all = torch.from_numpy(labels)

    torch.manual_seed(cfg.seed)
    model: torch.nn.Module = VideoDiT(model_config) if video else DiT(model_config)  # type: ignore[arg-type]
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    diffusion = GaussianDiffusion.linear()
    step, elapsed = 0, 0.0
    gen = torch.Generator().manual_seed(cfg.seed)
    state_path = out / "state.pt"
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        step, elapsed = state["step"], state["elapsed"]
    elif cfg.init:
        from qdit.models.state_dict import load_state_dict_file, load_strict

        init = {k: v.float() for k, v in load_state_dict_file(Path(cfg.init)).items()}
        if video and "temp_embed" not in init:
            from qdit.models.latte import video_from_image

            for target in (model, ema):
                video_from_image(target, init)  # type: ignore[arg-type]
        else:
            load_strict(model, init, source=cfg.init)
            load_strict(ema, init, source=cfg.init)
    (out / "config.json").write_text(
        json.dumps({"train": asdict(cfg), "model": model_config.to_dict(), "video": video}, indent=2)
    )
    log = open(out / "log.jsonl", "a")
    model.train()
    t_start = time.time() - elapsed
    losses: list[float] = []
    n = images.shape[0]
    x_images = None if video else torch.from_numpy(images.copy()).float().div(127.5).sub(1).unsqueeze(1)
    perm = torch.randperm(n, generator=gen)
    cursor = (step * cfg.batch_size) % n

    def batch(idx: torch.Tensor) -> torch.Tensor:
        if video:
            from qdit.data import FLIP_MOTION, MOTIONS, make_clips

            motions = torch.randint(0, len(MOTIONS), (len(idx),), generator=gen).numpy()
            garments = images[idx.numpy()]
            if cfg.flip:  # a mirrored garment on the mirrored path: the clip family is closed under flips
                flip = (torch.rand(len(idx), generator=gen) < 0.5).numpy()
                garments = np.where(flip[:, None, None], garments[:, :, ::-1], garments)
                motions = np.where(flip, np.take(FLIP_MOTION, motions), motions)
            clips = torch.from_numpy(make_clips(garments, motions)).float().div(127.5).sub(1)
            return clips.unsqueeze(1)  # [B, 1, T, H, W]
        x0 = x_images[idx]  # type: ignore[index]
        if cfg.flip:
            flip = torch.rand(x0.shape[0], generator=gen) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        return x0

    def save() -> None:
        _atomic_save(
            {
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "opt": opt.state_dict(),
                "gen": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "step": step,
                "elapsed": time.time() - t_start,
            },
            state_path,
        )

    while step < cfg.max_steps and (time.time() - t_start) < cfg.max_minutes * 60:
        if cursor + cfg.batch_size > n:
            perm, cursor = torch.randperm(n, generator=gen), 0
        idx = perm[cursor : cursor + cfg.batch_size]
        cursor += cfg.batch_size
        x0, y = batch(idx), y_all[idx]
        t = torch.randint(0, diffusion.num_timesteps, (x0.shape[0],), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        x_t = diffusion.q_sample(x0, t, noise)
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
        if cfg.decay_steps:
            left = (cfg.max_steps - step) / cfg.decay_steps
            lr *= 0.1 + 0.9 * min(1.0, max(0.0, left))
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            out_t = model(x_t, t, y)
        loss = diffusion.training_losses(out_t.float(), x0, x_t, t, noise, model_config.learn_sigma).mean()
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step)) if cfg.ema_warmup else cfg.ema_decay
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        step += 1
        losses.append(loss.item())
        if step % cfg.log_every == 0:
            rec = {
                "step": step,
                "loss": float(np.mean(losses)),
                "lr": lr,
                "minutes": (time.time() - t_start) / 60,
            }
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(json.dumps(rec), flush=True)
            losses = []
        if step % cfg.ckpt_every == 0:
            save()
            export_ema(ema, out / "ema.safetensors")
    save()
    export_ema(ema, out / "ema.safetensors")
    log.close()
    return out / "ema.safetensors"


def export_ema(ema: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(tmp))
    os.replace(tmp, path)


def main() -> None:  # python -m qdit.train OUT_DIR
    import argparse

    p = argparse.ArgumentParser(description="train the embedded Fashion-MNIST DiT")
    p.add_argument("out_dir")
    p.add_argument("--max-steps", type=int, default=TrainConfig.max_steps)
    p.add_argument("--max-minutes", type=float, default=TrainConfig.max_minutes)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--decay-steps", type=int, default=0)
    p.add_argument("--ema-decay", type=float, default=TrainConfig.ema_decay)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--ckpt-every", type=int, default=TrainConfig.ckpt_every)
    p.add_argument("--init", default=None, help="warm start from these weights (ignored when resuming)")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--ema-warmup", action="store_true", help="EMA decay min(decay, (1+step)/(10+step))")
    p.add_argument("--video", action="store_true", help="train the embedded video DiT on moving-garment clips")
    a = p.parse_args()
    cfg = TrainConfig(
        max_steps=a.max_steps, max_minutes=a.max_minutes, threads=a.threads,
        decay_steps=a.decay_steps, ema_decay=a.ema_decay, lr=a.lr, ckpt_every=a.ckpt_every, init=a.init,
        batch_size=a.batch_size, ema_warmup=a.ema_warmup,
    )  # fmt: skip
    if a.video:
        from qdit.models.embedded import EMBEDDED_VIDEO_CONFIG

        train_embedded(a.out_dir, cfg, EMBEDDED_VIDEO_CONFIG)
    else:
        train_embedded(a.out_dir, cfg)


if __name__ == "__main__":
    main()
