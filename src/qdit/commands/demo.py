"""``qdit demo``: the embedded model end to end — FP vs W8A8 / W6A8 / W4A8, same seeds.

For each configuration it quantizes a fresh copy of the embedded Fashion-MNIST DiT, samples the same
images (same labels, same per-sample noise), and scores them with the domain metrics (classifier
Fréchet distance to the Fashion-MNIST test set, class accuracy). It prints a table, writes a
side-by-side image grid and a JSON report.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="embedded model end to end: FP vs quantized, a table and an image grid")
    p.add_argument("--num", type=int, default=250, help="samples per configuration")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps")
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--group-size", type=int, default=64, help="group size of the group-wise configurations")
    p.add_argument("--configs", default=None, help="comma-separated subset of the configuration names")
    p.add_argument("--out", default="demo_out", help="folder for the grid and the report")
    p.add_argument("--json", default=None, help="also write the report here")
    p.add_argument(
        "--kernel", choices=("auto", "int", "fake"), default="auto",
        help="quantized layers on integer kernels where the recipe allows (auto), everywhere (int), or fake",
    )  # fmt: skip
    return p


def demo_configs(group: int) -> dict[str, object]:
    """Name -> recipe (``None`` = full precision). Q-DiT without search = group-wise weights and
    activations with sample-wise dynamic activation ranges."""
    from qdit.recipe import QuantSpec, Recipe

    def qdit_spec(w: int, a: int, gran: str = "sample") -> Recipe:
        return Recipe(
            default=QuantSpec(w_bits=w, a_bits=a, w_group=group, a_group=group, act_granularity=gran)
        )

    return {
        "FP32": None,
        "W8A8 group dynamic": qdit_spec(8, 8),
        "W6A8 group dynamic": qdit_spec(6, 8),
        "W4A8 per-channel RTN": Recipe.baseline("rtn", w_bits=4, a_bits=8),
        "W4A8 group static": qdit_spec(4, 8, "static"),
        "W4A8 group dynamic": qdit_spec(4, 8),
        # the embedded model forgives 4-bit weights; 4-bit activations are where the methods separate
        "W4A4 per-channel RTN": Recipe.baseline("rtn", w_bits=4, a_bits=4),
        "W4A4 group dynamic": qdit_spec(4, 4),
    }


def run(args: argparse.Namespace) -> int:
    import torch

    import qdit
    from qdit.calib import CalibConfig
    from qdit.diffusion.sampler import SamplerConfig, check_cfg_scale, sample_images
    from qdit.errors import QditError
    from qdit.eval.domain import DomainFeatures, domain_metrics
    from qdit.eval.npz import load_reference
    from qdit.io.atomic import atomic_path, check_outputs, write_json
    from qdit.models.embedded import load_embedded
    from qdit.nn import freeze, kernel_summary
    from qdit.viz import image_grid, side_by_side

    if args.num < 10:
        raise QditError(f"--num must be >= 10 (one per class), got {args.num}")
    configs = demo_configs(args.group_size)
    if args.configs:
        wanted = [c.strip() for c in args.configs.split(",")]
        bad = [c for c in wanted if c not in configs]
        if bad:
            raise QditError(f"unknown demo configuration {bad[0]!r}; known: {', '.join(configs)}")
        configs = {k: v for k, v in configs.items() if k in wanted}
    check_cfg_scale(args.cfg, "--cfg")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise QditError(f"--out {out} exists and is not a folder")
    check_outputs(
        {
            "--out (demo_grid.png)": out / "demo_grid.png",
            "--out (demo.json)": out / "demo.json",
            "--json": args.json,
        }
    )
    ref = load_reference("fashion-mnist-test")
    domain = DomainFeatures(progress=False)
    sampler = SamplerConfig(steps=args.steps, cfg_scale=args.cfg, clip_denoised=True)
    rows, grids = [], []
    print(
        f"embedded Fashion-MNIST DiT: {args.num} samples per configuration, {args.steps} DDIM steps, "
        f"guidance {args.cfg}, seed {args.seed}, group size {args.group_size}"
    )
    for name, recipe in configs.items():
        t0 = time.time()
        model = load_embedded()
        if recipe is not None:
            calib = CalibConfig(num_samples=16, steps=args.steps, seed=args.seed + 1)
            qdit.quantize(model, recipe, calib=calib)
            freeze(model, args.kernel)
            print(f"  {name}: {kernel_summary(model)}")
        t_quant = time.time() - t0
        with torch.inference_mode():
            images, labels = sample_images(model, args.num, args.seed, sampler, progress=True)
        t_sample = time.time() - t0 - t_quant
        m = domain_metrics(images, labels, ref, domain, metrics=("domain_fd", "class_acc"))
        rows.append(
            {"config": name, "domain_fd": m["domain_fd"], "class_acc": m["class_acc"],
             "quantize_s": round(t_quant, 2), "sample_s": round(t_sample, 2)}
        )  # fmt: skip
        print(
            f"  {name:<22} domain FD {m['domain_fd']:8.2f}   class acc {m['class_acc']:6.1%}   ({t_sample:.0f} s)"
        )
        grids.append(image_grid(images[:30], nrow=10, scale=2))
    table = format_table(rows, args)
    print()
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "demo_grid.png", ".png") as tmp:
        side_by_side(grids, [r["config"] for r in rows]).save(tmp, format="PNG")
    report = {
        "num": args.num, "steps": args.steps, "cfg": args.cfg, "seed": args.seed,
        "group_size": args.group_size, "rows": rows, "table": table,
    }  # fmt: skip
    write_json(out / "demo.json", report)
    if args.json:
        write_json(args.json, report)
    print(f"\nimage grid: {out / 'demo_grid.png'}   report: {out / 'demo.json'}")
    return 0


def format_table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        "| configuration | domain FD (lower is better) | class accuracy |",
        "|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['config']} | {r['domain_fd']:.2f} | {r['class_acc']:.1%} |")
    return "\n".join(lines)
