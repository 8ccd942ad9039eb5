"""``qdit bench``: speed and size of quantized vs float models, measured in one run on the same inputs.

On the embedded model (or ``--model``): the time of one denoiser forward on a fixed batch, for FP32,
BF16 and quantized configurations, and the size of the weights on disk (float state dict vs the packed
qdit folder). Ratios are against FP32 measured in the same run.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="speed and size of quantized vs float models (same inputs, same run)")
    p.add_argument("--model", default="embedded")
    p.add_argument("--arch", default=None)
    p.add_argument("--batch", type=int, default=64, help="images per forward")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="fewer repeats")
    p.add_argument("--json", default=None)
    return p


def _time_forward(model, x, t, y, repeats: int, autocast: bool = False) -> float:
    import torch

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model(x, t, y)  # warm-up (fills dequantized-weight caches)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x, t, y)
            best = min(best, time.perf_counter() - t0)
    return best


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run(args: argparse.Namespace) -> int:
    import torch

    import qdit
    from qdit.io.atomic import write_json
    from qdit.models.registry import load_model
    from qdit.recipe import QuantSpec, Recipe

    repeats = 3 if args.quick else args.repeats
    base = load_model(args.model, args.arch)
    cfg = base.config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    t = torch.randint(0, 1000, (args.batch,), generator=g)
    y = torch.randint(0, cfg.num_classes, (args.batch,), generator=g)
    group = 64 if cfg.hidden_size % 64 == 0 else 0
    configs = {
        "W8A8 group dynamic": QuantSpec(
            w_bits=8, a_bits=8, w_group=group, a_group=group, act_granularity="sample"
        ),
        "W4A8 group dynamic": QuantSpec(
            w_bits=4, a_bits=8, w_group=group, a_group=group, act_granularity="sample"
        ),
        "W4A16 group (weights only)": QuantSpec(w_bits=4, a_bits=None, w_group=group, a_group=group),
    }
    rows = []
    fp_time = _time_forward(base, x, t, y, repeats)
    with tempfile.TemporaryDirectory() as tmp:
        fp_path = Path(tmp) / "fp32.safetensors"
        from safetensors.torch import save_file

        state = {k: v.contiguous() for k, v in base.state_dict().items()}
        save_file(state, str(fp_path))
        fp_bytes = fp_path.stat().st_size
        rows.append({"config": "FP32", "forward_ms": fp_time * 1e3, "speed_vs_fp32": 1.0,
                     "disk_MB": fp_bytes / 2**20, "size_vs_fp32": 1.0})  # fmt: skip
        bf16_time = _time_forward(base, x, t, y, repeats, autocast=True)
        rows.append({"config": "BF16 autocast", "forward_ms": bf16_time * 1e3, "speed_vs_fp32": fp_time / bf16_time,
                     "disk_MB": fp_bytes / 2 / 2**20, "size_vs_fp32": 0.5})  # fmt: skip
        for name, spec in configs.items():
            model = load_model(args.model, args.arch)
            qdit.quantize(model, Recipe(default=spec))
            q_time = _time_forward(model, x, t, y, repeats)
            out = Path(tmp) / name.replace(" ", "_")
            qdit.save(model, out)
            q_bytes = _dir_size(out)
            rows.append({"config": name, "forward_ms": q_time * 1e3, "speed_vs_fp32": fp_time / q_time,
                         "disk_MB": q_bytes / 2**20, "size_vs_fp32": q_bytes / fp_bytes})  # fmt: skip
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    print(f"{args.model}: one forward of {args.batch} images (best of {repeats}); {machine}")
    print("| configuration | forward ms | speed vs FP32 | weights on disk MB | size vs FP32 |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['config']} | {r['forward_ms']:.1f} | {r['speed_vs_fp32']:.2f}x | {r['disk_MB']:.2f} | {r['size_vs_fp32']:.3f} |"
        )
    print(
        "quantized layers run as fake quantization (dequantized weights, float matmul): the size is real, "
        "the speed is not an integer-kernel speed"
    )
    if args.json:
        write_json(
            args.json,
            {"model": args.model, "batch": args.batch, "repeats": repeats, "machine": machine, "rows": rows},
        )
    return 0
