"""What several subcommands define and check the same way: ``--device`` and ``--cfg-channels``."""

from __future__ import annotations

import argparse

from qdit.errors import QditError

DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def add_cfg_channels(
    p: argparse.ArgumentParser, option: str = "--cfg-channels", what: str = "guidance"
) -> None:
    """The ``--cfg-channels`` option: how many noise channels classifier-free guidance applies to."""
    p.add_argument(
        option,
        type=int,
        default=None,
        help=f"{what}: guide only the first N noise channels, the rest from the conditional prediction "
        "(default: all; 3 on a 4-channel latent DiT is official DiT's forward_with_cfg, as Q-DiT's FIDs)",
    )


def check_cfg_channels(value: int | None, in_channels: int | None, option: str = "--cfg-channels") -> None:
    """``--cfg-channels`` against the model's channels: a one-line :class:`QditError` if it does not fit."""
    from qdit.diffusion.sampler import check_cfg_channels as check

    try:
        check(value, in_channels, option)
    except ValueError as exc:
        raise QditError(str(exc)) from None


def resolve_device(text: str, option: str = "--device") -> str:
    """``auto`` (CUDA when available, else the CPU) or a device torch can use here; else a one-line
    :class:`QditError` (an unknown name, or CUDA asked for on a machine or build without it)."""
    import torch

    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise QditError(
            f"{option} {text!r} is not a device; use auto, cpu, cuda or cuda:N (or mps, xpu)"
        ) from None
    if device.type not in DEVICE_TYPES:
        raise QditError(f"{option} {text!r}: qdit runs on {', '.join(DEVICE_TYPES)}, not {device.type}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise QditError(f"{option} {text}: CUDA is not available ({build}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise QditError(f"{option} {text}: there are only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        backend = getattr(torch, device.type, None) or getattr(torch.backends, device.type, None)
        available = getattr(backend, "is_available", None)
        if available is None or not available():
            raise QditError(f"{option} {text}: {device.type} is not available on this machine")
    return str(device)
