"""Write a training run's EMA weights as a shipped asset in fp16 (the video model's float32 weights are
over the 25 MB limit for committed files; fp16 keeps them at half that, and the loader casts back).

    python scripts/export_asset.py runs/video1/ema.safetensors src/qdit/assets/embedded_video_dit.safetensors
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

LIMIT_BYTES = 25 * 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst = Path(args[0]), Path(args[1])
    state = load_file(str(src))
    half = {}
    for name, value in state.items():
        if not torch.isfinite(value).all():
            print(f"error: {src}: {name} has non-finite values", file=sys.stderr)
            return 2
        h = value.half() if value.is_floating_point() else value
        if value.is_floating_point() and not torch.isfinite(h).all():
            print(f"error: {name} overflows fp16", file=sys.stderr)
            return 2
        half[name] = h.contiguous()
    tmp = dst.with_suffix(".tmp")
    save_file(half, str(tmp))
    size = tmp.stat().st_size
    if size > LIMIT_BYTES:
        tmp.unlink()
        print(f"error: {dst} would be {size / 2**20:.1f} MiB, over the 25 MiB limit", file=sys.stderr)
        return 2
    os.chmod(tmp, 0o644)
    os.replace(tmp, dst)
    print(f"{src} -> {dst} ({size / 2**20:.1f} MiB, fp16)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
