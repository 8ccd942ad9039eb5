"""Loading DiT checkpoints: official ``.pt`` layout or safetensors, with strict key/shape checks."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model (missing/unexpected key, wrong shape) or is unreadable."""


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a torch ``.pt``/``.pth`` checkpoint (weights only).

    Official DiT checkpoints are a bare state dict; training checkpoints keep it under ``"ema"`` or
    ``"model"`` (``"ema"`` is preferred, as the official sampling script does).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if isinstance(obj, Mapping) and "ema" in obj and isinstance(obj["ema"], Mapping):
        obj = obj["ema"]
    elif isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return dict(obj)


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy ``state_dict`` into ``model``; every key must exist with the same shape, and none may be missing.

    The error names the first offending key and both shapes.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing:
        raise CheckpointError(f"{source}: missing key {missing[0]!r} ({len(missing)} missing in all)")
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in all)"
        )
    for k, v in state_dict.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(
                f"{source}: key {k!r} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}"
            )
    model.load_state_dict(dict(state_dict), strict=True)
