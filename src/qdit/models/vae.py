"""The autoencoder that turns a latent DiT's samples into RGB images: a diffusers ``AutoencoderKL``
folder (``save_pretrained`` layout, e.g. ``stabilityai/sd-vae-ft-ema`` or a pipeline's ``vae/``).

A model carries the folder's path (``qdit_vae``), not the autoencoder: the path goes into a quantized
checkpoint's description, and the autoencoder is loaded (float, not quantized) only to decode.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from qdit.errors import QditError
from qdit.models.optional import import_diffusers


def check_vae_dir(path: str | Path) -> str:
    """The absolute path of an ``AutoencoderKL`` folder, or a one-line error."""
    root = Path(path)
    cfg = root / "config.json"
    if not cfg.is_file():
        raise QditError(f"--vae {path}: not a diffusers AutoencoderKL folder (no config.json)")
    try:
        name = json.loads(cfg.read_text()).get("_class_name")
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise QditError(f"--vae {path}: cannot read config.json: {exc}") from None
    if name != "AutoencoderKL":
        raise QditError(f"--vae {path}: expected an AutoencoderKL folder, found {name!r}")
    return str(root.resolve())


def attach_vae(model: nn.Module, path: str | Path) -> nn.Module:
    """Record the VAE folder ``path`` with ``model`` (checked now; loaded when decoding)."""
    object.__setattr__(model, "qdit_vae", check_vae_dir(path))
    return model


def load_vae(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    diffusers = import_diffusers()
    try:
        vae = diffusers.AutoencoderKL.from_pretrained(
            check_vae_dir(path), local_files_only=True, low_cpu_mem_usage=False
        )
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()
        raise QditError(f"cannot load the VAE in {path}: {first[0] if first else exc}") from None
    return vae.float().eval().to(device)


def vae_decoder(path: str | Path, batch_size: int = 8) -> Callable[[torch.Tensor], torch.Tensor]:
    """``decode(latents) -> images`` in [-1, 1], ``[N, 3, 8H, 8W]``; latents are divided by the VAE's
    ``scaling_factor`` first (0.18215 for DiT's), as diffusers' ``DiTPipeline`` does."""
    cache: dict[str, nn.Module] = {}

    @torch.no_grad()
    def decode(latents: torch.Tensor) -> torch.Tensor:
        if "vae" not in cache:
            cache["vae"] = load_vae(path, latents.device)
        vae = cache["vae"]
        scale = float(getattr(vae.config, "scaling_factor", 0.18215))
        outs = [
            vae.decode(chunk.float() / scale).sample.clamp(-1, 1).cpu() for chunk in latents.split(batch_size)
        ]
        return torch.cat(outs) if outs else latents.new_zeros(0, 3, 1, 1)

    return decode
