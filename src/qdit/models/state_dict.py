"""State dicts from weight files (official DiT ``.pt`` layout or safetensors), loaded into a model with
strict key and shape checks."""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from qdit.quant.finite import NonFiniteError, check_finite_tensors


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model (missing/unexpected key, wrong shape) or is unreadable."""


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since 1.6
PICKLE_MAGIC = b"\x80"  # the legacy format: a pickle (protocol >= 2) first


def _sniff(path: Path) -> str:
    """``"torch"`` for a file torch.load may read, ``"safetensors"``, or a description of what else it is."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_MAGIC):
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1:
        return "safetensors"
    if not head:
        return "an empty file"
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "not a PyTorch or safetensors file"


def _read_error(path: Path, exc: Exception) -> CheckpointError:
    """One line for why ``torch.load(weights_only=True)`` refused ``path``."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" (it holds {found.group(1)})" if found else ""
        return CheckpointError(
            f"{path} holds Python objects besides tensors{what}; qdit loads tensors only and never "
            "unpickles code: save the state dict (torch.save(model.state_dict(), ...)) or safetensors"
        )
    first = text.strip().splitlines()[0] if text.strip() else ""
    return CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {first}".rstrip(": "))


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a torch ``.pt``/``.pth`` checkpoint (weights only).

    Official DiT checkpoints are a bare state dict; training checkpoints keep it under ``"ema"`` or
    ``"model"`` (``"ema"`` is preferred, as the official sampling script does).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        kind = _sniff(path)
        if path.suffix == ".safetensors" or kind == "safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
            check_finite_tensors(state, str(path))
            return state
        if kind != "torch":
            raise CheckpointError(
                f"{path} is not a checkpoint ({kind}): give a .pt/.pth or .safetensors file"
            )
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (CheckpointError, NonFiniteError):
        raise
    except Exception as exc:  # corrupt or foreign file
        raise _read_error(path, exc) from None
    if isinstance(obj, Mapping) and "ema" in obj and isinstance(obj["ema"], Mapping):
        obj = obj["ema"]
    elif isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    check_finite_tensors(obj, str(path))
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
