"""``qdit quantize``: quantize a model by a uniform spec, a baseline or a recipe file, into a model folder.

``--arch`` (for a checkpoint file) is an official name such as ``DiT-XL/2`` or a JSON object of
``DiTConfig`` fields (inline or a ``.json`` path), see :mod:`qdit.models.registry`. With ``--recipe``,
options given explicitly on the command line (``--w-bits``, ``--a-bits``, ``--group-size``, ...) replace
the recipe's default spec fields; ``--include`` adds to its include list.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from qdit.commands.common import add_cfg_channels, check_cfg_channels
from qdit.quant.rules import WEIGHT_METHODS, bits_range
from qdit.recipe import ACT_GRANULARITIES, BALANCE_METHODS


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("quantize", help="quantize a model (weights and activations) into a model folder")
    p.add_argument(
        "--model", default="embedded", help="'embedded', 'embedded-video', a DiT checkpoint file (with --arch), a diffusers pipeline/transformer folder or a qdit folder"
    )
    p.add_argument(
        "--arch", default=None, help="architecture of a checkpoint: DiT-XL/2, or JSON of DiTConfig fields"
    )
    p.add_argument(
        "--vae",
        default=None,
        help="a diffusers AutoencoderKL folder for a latent model, recorded in the output (qdit sample decodes with it)",
    )
    p.add_argument("--w-bits", default=None, help=f"weight bits, {bits_range()} (default 4)")
    p.add_argument(
        "--a-bits",
        default=None,
        help=f"activation bits, {bits_range()}, or 'none' for float activations (default 8)",
    )
    p.add_argument(
        "--group-size",
        default=None,
        help="group size for weights and activations (0 = per channel / per token; default 128)",
    )
    p.add_argument("--recipe", default=None, help="a recipe JSON (per-layer specs)")
    p.add_argument(
        "--baseline", default=None, help="start from a baseline: rtn, rtn-token, smoothquant, ptq4dit, gptq, qdit"
    )
    p.add_argument(
        "--act-granularity",
        default=None,
        help=f"{' | '.join(ACT_GRANULARITIES)} (default token; frame: per frame of each clip for video "
        "models, the same as sample for images)",
    )
    p.add_argument("--weight-method", default=None, help=f"{' | '.join(WEIGHT_METHODS)} (default rtn)")
    p.add_argument(
        "--symmetric", action="store_true", default=None, help="symmetric weight and activation quantizers"
    )
    p.add_argument(
        "--balance",
        default=None,
        help=f"activation-weight channel balancing: none | {' | '.join(BALANCE_METHODS)} (csb: PTQ4DiT-style "
        "salience balancing over timesteps; needs calibration)",
    )
    p.add_argument(
        "--smooth-alpha",
        "--balance-alpha",
        dest="smooth_alpha",
        default=None,
        help="SmoothQuant strength alpha in [0, 1] (default 0.5; implies --balance smoothquant)",
    )
    p.add_argument(
        "--include",
        action="append",
        default=[],
        help="also quantize a layer group (e.g. adaln) or pattern; repeatable",
    )
    p.add_argument(
        "--exclude", action="append", default=[], help="leave a layer group or pattern in float; repeatable"
    )
    p.add_argument(
        "--calib-samples", type=int, default=16, help="calibration trajectories (GPTQ / static / balancing)"
    )
    p.add_argument("--calib-steps", type=int, default=25, help="DDIM steps per calibration trajectory")
    p.add_argument("--calib-seed", type=int, default=1)
    p.add_argument(
        "--calib",
        default=None,
        help="a calibration file from qdit calibrate, used instead of sampling now (GPTQ needs one made "
        "with --hessian; layers are then calibrated on the float model, not block by block)",
    )
    p.add_argument("--calib-cfg", type=float, default=1.5, help="guidance scale during calibration")
    add_cfg_channels(p, "--calib-cfg-channels", "calibration guidance")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--out", required=True, help="output folder (model.safetensors + qdit.json)")
    p.add_argument("--json", default=None, help="also write the summary as JSON here")
    return p


def _int_option(name: str, value: str | None, allow_none: bool = False) -> Any:
    from qdit.errors import QditError

    if value is None:
        return None
    if allow_none and str(value).lower() in ("none", "null", "16", "32", "fp"):
        return "none"
    try:
        return int(value)
    except ValueError:
        raise QditError(f"{name} must be an integer, got {value!r}") from None


def build_recipe(args: argparse.Namespace) -> Any:
    """The recipe from ``--recipe`` / ``--baseline`` / the uniform options (explicit options win)."""
    from dataclasses import replace

    from qdit.errors import QditError
    from qdit.recipe import QuantSpec, Recipe

    if args.recipe and args.baseline:
        raise QditError("use either --recipe or --baseline, not both")
    changes: dict[str, Any] = {}
    w_bits = _int_option("--w-bits", args.w_bits)
    a_bits = _int_option("--a-bits", args.a_bits, allow_none=True)
    group = _int_option("--group-size", args.group_size)
    if w_bits is not None:
        changes["w_bits"] = w_bits
    if a_bits is not None:
        changes["a_bits"] = None if a_bits == "none" else a_bits
    if group is not None:
        changes["w_group"] = changes["a_group"] = group
    if args.act_granularity is not None:
        changes["act_granularity"] = args.act_granularity
    if args.weight_method is not None:
        changes["weight_method"] = args.weight_method
    if args.symmetric:
        changes["w_symmetric"] = changes["a_symmetric"] = True
    if args.smooth_alpha is not None:
        try:
            changes["smooth_alpha"] = float(args.smooth_alpha)
        except ValueError:
            raise QditError(f"--smooth-alpha must be a number, got {args.smooth_alpha!r}") from None
    balance = getattr(args, "balance", None)
    if balance is not None:
        if balance not in ("none", *BALANCE_METHODS):
            raise QditError(f"--balance must be one of none, {', '.join(BALANCE_METHODS)}, got {balance!r}")
        if balance != "smoothquant" and "smooth_alpha" in changes:
            raise QditError(f"--smooth-alpha applies to --balance smoothquant, not {balance}")
        changes["balance"] = None if balance == "none" else balance
        changes.setdefault("smooth_alpha", None)  # smoothquant: 0.5; the others take none
    if args.recipe:
        recipe = Recipe.load(args.recipe)
    elif args.baseline:
        recipe = Recipe.baseline(args.baseline)
    else:
        recipe = Recipe(default=QuantSpec(**{k: v for k, v in changes.items()}))
        changes = {}
    if changes:
        recipe.default = replace(recipe.default, **changes)
    recipe.include = [*recipe.include, *args.include]
    recipe.exclude = [*recipe.exclude, *args.exclude]
    return Recipe.from_dict(recipe.to_dict())  # re-validate the whole recipe


def _state_bytes(model: Any) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def run(args: argparse.Namespace) -> int:
    from qdit.errors import QditError

    recipe = build_recipe(args)  # validate options before any heavy import or work
    if args.calib_samples < 1 or args.calib_steps < 1:
        raise QditError("--calib-samples and --calib-steps must be >= 1")

    import torch

    from qdit.api import load_model, quantize, resolve_specs
    from qdit.calib import CalibConfig
    from qdit.commands.common import resolve_device
    from qdit.diffusion.sampler import check_cfg_scale
    from qdit.io.atomic import check_outputs, write_json
    from qdit.io.checkpoint import check_save_target, save
    from qdit.models.registry import model_input_path
    from qdit.models.vae import attach_vae, check_vae_dir

    check_cfg_scale(args.calib_cfg, "--calib-cfg")
    check_outputs(
        {"--out": args.out, "--json": args.json},
        {"--model": model_input_path(args.model), "--recipe": args.recipe, "--calib": args.calib},
        folders=("--out",),
    )
    check_save_target(args.out)  # before the work: a typo must not cost the whole run
    vae = check_vae_dir(args.vae) if args.vae else None
    device = resolve_device(args.device)
    t0 = time.time()
    model = load_model(args.model, args.arch, device=device)
    if vae:
        attach_vae(model, vae)
    if any(type(m).__name__ == "QuantLinear" for m in model.modules()):
        raise QditError(f"{args.model} is already quantized")
    if args.calib_cfg_channels is not None:
        from qdit.models.adapter import get_adapter

        shape = get_adapter(model).image_shape(model)  # the sample shape is the adapter's to know
        check_cfg_channels(args.calib_cfg_channels, shape[0] if shape else None, "--calib-cfg-channels")
    specs = resolve_specs(model, recipe)  # fails fast on recipes that do not fit the model
    size_before = _state_bytes(model)
    calib: Any = CalibConfig(
        num_samples=args.calib_samples, steps=args.calib_steps, seed=args.calib_seed, cfg_scale=args.calib_cfg,
        cfg_channels=args.calib_cfg_channels, progress=True,
    )  # fmt: skip
    if args.calib is not None:
        from qdit.calib import Calibration

        calib = Calibration.load(args.calib)
        modules = dict(model.named_modules())
        for name, spec in specs.items():
            if not spec.needs_calibration:
                continue
            if name not in calib:
                raise QditError(f"--calib {args.calib} has no statistics for layer {name} (made for another model or layer set?)")
            if calib[name].width != modules[name].in_features:
                raise QditError(
                    f"--calib {args.calib}: layer {name} has input width {calib[name].width} there but "
                    f"{modules[name].in_features} in {args.model} (made for another model)"
                )
            if spec.needs_hessian and calib[name].hessian is None:
                raise QditError(f"--calib {args.calib} has no Hessians, which GPTQ needs: make it with qdit calibrate --hessian")
    with torch.no_grad():
        # saved as integer codes; the kernel path is chosen when the folder is loaded (qdit.load)
        quantize(model, recipe, calib, progress=True, kernel="fake")
    report = save(model, args.out)
    from qdit.nn import choose_kernel, quant_layers

    kernels = {name: choose_kernel(layer, "auto") for name, layer in quant_layers(model).items()}
    seconds = time.time() - t0
    labels = sorted({s.label() for s in specs.values()})
    summary = {
        "model": args.model,
        "out": str(args.out),
        "layers_quantized": len(specs),
        "specs": labels,
        "size_mb_before": round(size_before / 1e6, 4),
        "size_mb_after": round(report["bytes"] / 1e6, 4),
        "quantized_layers_mb_bf16": round(report["quantized_weight_bf16_bytes"] / 1e6, 4),
        "quantized_layers_mb_packed": round(report["quantized_weight_bytes"] / 1e6, 4),
        "seconds": round(seconds, 2),
        "recipe": recipe.to_dict(),
        "kernels_here": kernels,
    }
    spec_text = labels[0] if len(labels) == 1 else f"{len(labels)} different specs"
    print(
        f"quantized {len(specs)} layers ({spec_text}) -> {args.out}: "
        f"{summary['size_mb_before']:.2f} MB -> {summary['size_mb_after']:.2f} MB "
        f"(quantized layers {summary['quantized_layers_mb_bf16']:.2f} MB bf16 -> "
        f"{summary['quantized_layers_mb_packed']:.2f} MB) in {seconds:.1f} s"
    )
    counts = {p: sum(1 for v in kernels.values() if v == p) for p in sorted(set(kernels.values()))}
    print("loaded here it runs: " + ", ".join(f"{n} layers {p}" for p, n in counts.items()))
    if args.json:
        write_json(args.json, summary)
    return 0
