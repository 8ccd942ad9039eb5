"""``qdit calibrate``: capture calibration statistics once (per-channel ranges, Hessians, row samples of
each layer's input over sampling trajectories) and reuse them with ``qdit quantize --calib``."""

from __future__ import annotations

import argparse

from qdit.commands.common import add_cfg_channels


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("calibrate", help="capture calibration statistics to a file (qdit quantize --calib)")
    p.add_argument("--model", default="embedded", help="a float model: 'embedded', 'embedded-video', a DiT "
                   "checkpoint (with --arch) or a diffusers folder")  # fmt: skip
    p.add_argument("--arch", default=None, help="architecture of a checkpoint, e.g. DiT-XL/2")
    p.add_argument("--include", action="append", default=[], help="also capture a layer group (e.g. adaln) or pattern")
    p.add_argument("--hessian", action="store_true", help="also accumulate each layer's Hessian (needed by GPTQ)")
    p.add_argument("--calib-samples", type=int, default=16, help="sampling trajectories (default 16)")
    p.add_argument("--calib-steps", type=int, default=25, help="DDIM steps per trajectory (default 25)")
    p.add_argument("--calib-seed", type=int, default=1)
    p.add_argument("--calib-cfg", type=float, default=1.5, help="guidance scale during calibration")
    add_cfg_channels(p, "--calib-cfg-channels", "calibration guidance")
    p.add_argument("--max-rows", type=int, default=2048, help="input rows kept per layer (default 2048)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--out", required=True, help="output calibration file (.pt, tensors only)")
    p.add_argument("--json", default=None, help="also write the summary as JSON here")
    return p


def run(args: argparse.Namespace) -> int:
    import time

    from qdit.errors import QditError

    if args.calib_samples < 1 or args.calib_steps < 1 or args.max_rows < 0:
        raise QditError("--calib-samples and --calib-steps must be >= 1 and --max-rows >= 0")
    if not str(args.out).endswith(".pt"):
        raise QditError(f"--out must end with .pt, got {args.out}")
    import torch

    from qdit.api import load_model, resolve_specs
    from qdit.calib import CalibConfig
    from qdit.calib.capture import calibrate
    from qdit.commands.common import check_cfg_channels, resolve_device
    from qdit.diffusion.sampler import check_cfg_scale
    from qdit.io.atomic import check_outputs, write_json
    from qdit.models.registry import model_input_path
    from qdit.recipe import QuantSpec, Recipe

    check_cfg_scale(args.calib_cfg, "--calib-cfg")
    check_outputs({"--out": args.out, "--json": args.json}, {"--model": model_input_path(args.model)})
    device = resolve_device(args.device)
    t0 = time.time()
    model = load_model(args.model, args.arch, device=device)
    if any(type(m).__name__ == "QuantLinear" for m in model.modules()):
        raise QditError(f"{args.model} is quantized; calibrate the float model")
    if args.calib_cfg_channels is not None:
        from qdit.models.adapter import get_adapter

        shape = get_adapter(model).image_shape(model)
        check_cfg_channels(args.calib_cfg_channels, shape[0] if shape else None, "--calib-cfg-channels")
    # which layers the quantizer would take (group 0: any width fits)
    layers = list(resolve_specs(model, Recipe(default=QuantSpec(w_group=0, a_group=0), include=list(args.include))))
    config = CalibConfig(
        num_samples=args.calib_samples, steps=args.calib_steps, seed=args.calib_seed, cfg_scale=args.calib_cfg,
        cfg_channels=args.calib_cfg_channels, max_rows=args.max_rows, progress=True,
    )  # fmt: skip
    with torch.no_grad():
        calib = calibrate(model, layers, config, hessian_layers=layers if args.hessian else ())
    calib.meta["model"] = args.model
    calib.meta["widths"] = {n: calib[n].width for n in calib}
    calib.save(args.out)
    seconds = time.time() - t0
    print(
        f"calibrated {len(layers)} layers of {args.model} ({args.calib_samples} trajectories x "
        f"{args.calib_steps} steps{', Hessians' if args.hessian else ''}) in {seconds:.1f} s -> {args.out}"
    )
    if args.json:
        write_json(args.json, {"model": args.model, "out": str(args.out), "layers": layers,
                               "hessian": args.hessian, "seconds": round(seconds, 2), "config": calib.meta})  # fmt: skip
    return 0
