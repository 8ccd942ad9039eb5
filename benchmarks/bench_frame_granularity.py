"""SQNR of the dynamic activation granularities (token, frame, sample) on video activations.

Three measurements (fake quantization; SQNR = 10 log10(|ref|^2 / |ref - quantized|^2) in dB):

1. ``random``: activations of S clips x T frames x N tokens x C channels, standard normal, with one frame
   of every clip 20 times louder; both layouts a video DiT's linears see (frame-major ``[S*T, N, C]`` and
   token-major ``[S*N, T, C]``). Reported over the whole tensor and over the quiet frames only (where a
   per-clip range set by the loud frame costs most).
2. ``tiny``: a tiny random-weight VideoDiT (the test model), W8 and A8/A6/A4 group 16 on the block linears
   and adaLN, output SQNR against float on inputs whose frames differ in scale.
3. ``video`` (with ``--video-ckpt``): a video DiT checkpoint (``ema.safetensors`` with ``config.json``
   beside it, as ``qdit.train --video`` writes), output SQNR against float on noised Fashion-MNIST
   clips at a few timesteps.

Usage::

    python benchmarks/bench_frame_granularity.py [--video-ckpt runs/video1/ema.safetensors] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

import torch

import qdit
from qdit.models.latte import VideoDiT, VideoDiTConfig
from qdit.quant.activation import FRAME_MAJOR, TOKEN_MAJOR, ActLayout, activation_range
from qdit.quant.primitives import fake_quantize_range
from qdit.recipe import QuantSpec, Recipe

GRANULARITIES = ("token", "frame", "sample")


def sqnr(ref: torch.Tensor, got: torch.Tensor) -> float:
    noise = (ref.double() - got.double()).pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(ref.double().pow(2).sum().item() / noise)


def fake_quant(x: torch.Tensor, bits: int, group: int, gran: str, layout: ActLayout | None) -> torch.Tensor:
    xg, lo, hi = activation_range(x, group, gran, layout=layout)
    return fake_quantize_range(xg, lo, hi, bits, False).reshape(x.shape)


def random_activations(clips: int = 4, frames: int = 8, tokens: int = 64, width: int = 256) -> dict:
    g = torch.Generator().manual_seed(0)
    v = torch.randn(clips, frames, tokens, width, generator=g)
    loud = 3
    v[:, loud] *= 20
    quiet = torch.ones(frames, dtype=torch.bool)
    quiet[loud] = False
    layouts = {
        FRAME_MAJOR: (v.reshape(clips * frames, tokens, width), lambda q: q.reshape(clips, frames, tokens, width)),
        TOKEN_MAJOR: (
            v.transpose(1, 2).reshape(clips * tokens, frames, width),
            lambda q: q.reshape(clips, tokens, frames, width).transpose(1, 2),
        ),
    }
    out: dict = {}
    for order, (x, back) in layouts.items():
        layout = ActLayout(order, frames, tokens)
        for bits in (8, 6, 4):
            for gran in GRANULARITIES:
                q = back(fake_quant(x, bits, 128, gran, layout))
                out[f"{order} A{bits} g128 {gran}"] = {
                    "all": sqnr(v, q), "quiet frames": sqnr(v[:, quiet], q[:, quiet]),
                }  # fmt: skip
    return out


def output_sqnr(model_fn, inputs: tuple, specs: dict[str, QuantSpec]) -> dict:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        ref = model_fn()(*inputs)
    out = {}
    for label, spec in specs.items():
        for gran in GRANULARITIES:
            model = qdit.quantize(model_fn(), Recipe(replace(spec, act_granularity=gran), include=["adaln"]), kernel="fake")
            with torch.no_grad():
                out[f"{label} {gran}"] = sqnr(ref, model(*inputs))
    return out


def tiny() -> dict:
    cfg = VideoDiTConfig(input_size=8, num_frames=4, patch_size=4, hidden_size=32, depth=2, num_heads=2)

    def make() -> VideoDiT:  # every weight random (adaLN-Zero's zeros would make the output zero)
        model = VideoDiT(cfg)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name not in ("pos_embed", "temp_embed"):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        return model.eval()

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 4, 8, 8, generator=g) * torch.linspace(0.2, 4.0, 4).view(1, 1, -1, 1, 1)
    inputs = (x, torch.randint(0, 1000, (4,), generator=g), torch.randint(0, 10, (4,), generator=g))
    specs = {f"W8A{a} g16": QuantSpec(8, a, 16, 16) for a in (8, 6, 4)}
    return output_sqnr(make, inputs, specs)


def video(ckpt: Path, clips: int = 4) -> dict:
    from safetensors.torch import load_file

    from qdit.data import load_fashion_mnist_clips
    from qdit.diffusion.schedule import GaussianDiffusion

    cfg = VideoDiTConfig(**json.loads((ckpt.parent / "config.json").read_text())["model"])
    state = load_file(str(ckpt))

    def make() -> VideoDiT:
        model = VideoDiT(cfg, init_weights=False)
        model.load_state_dict(state)
        return model.eval()

    frames, labels, _ = load_fashion_mnist_clips("test", num=clips)
    x0 = torch.from_numpy(frames).float().div(127.5).sub(1).unsqueeze(1)  # [B, 1, T, 32, 32]
    diffusion = GaussianDiffusion.linear()
    g = torch.Generator().manual_seed(0)
    out: dict = {}
    specs = {"W8A8 g128": QuantSpec(8, 8, 128, 128), "W4A8 g128": QuantSpec(4, 8, 128, 128),
             "W8A6 g128": QuantSpec(8, 6, 128, 128)}  # fmt: skip
    for step in (100, 500, 900):
        ab = float(diffusion.alphas_cumprod[step])
        xt = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * torch.randn(x0.shape, generator=g)
        t = torch.full((clips,), step)
        y = torch.from_numpy(labels).long()
        out.update({f"t={step} {k}": v for k, v in output_sqnr(make, (xt, t, y), specs).items()})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--video-ckpt", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    results = {"random": random_activations(), "tiny": tiny()}
    if args.video_ckpt is not None:
        results["video"] = video(args.video_ckpt)
    for part, rows in results.items():
        print(f"## {part}")
        for k, v in rows.items():
            text = ", ".join(f"{n} {x:.2f}" for n, x in v.items()) if isinstance(v, dict) else f"{v:.2f}"
            print(f"{k}: {text} dB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
