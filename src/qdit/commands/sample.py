"""``qdit sample``: draw class-conditional samples to an ADM-style ``.npz`` (and an image grid).

A video model's samples are clips: the ``.npz`` holds ``arr_0`` uint8 ``[N, T, H, W, C]``, ``--grid`` shows
one row of frames per clip and ``--gif`` animates a grid of clips.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from qdit.commands.common import add_cfg_channels, check_cfg_channels


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("sample", help="sample images (or clips) from a model or a quantized model folder")
    p.add_argument(
        "--model", default="embedded", help="'embedded', 'embedded-video', a DiT checkpoint (with --arch), a diffusers folder or a quantized folder"
    )
    p.add_argument("--arch", default=None, help="architecture of a checkpoint, e.g. DiT-XL/2")
    p.add_argument(
        "--vae",
        default=None,
        help="a diffusers AutoencoderKL folder decoding a latent model's samples to RGB (default: the one "
        "recorded with the model or in its pipeline folder)",
    )
    p.add_argument(
        "--kernel",
        choices=("auto", "int", "fake"),
        default="auto",
        help="quantized folders: integer kernels where the recipe allows (auto), everywhere (int), or the "
        "fake-quantization reference (fake)",
    )
    p.add_argument(
        "-n",
        "--num",
        type=int,
        required=True,
        help="number of samples (-n under torchrun, whose parser takes --num for its own --numa-binding)",
    )
    p.add_argument("--steps", type=int, default=50, help="sampling steps (respaced)")
    p.add_argument("--method", choices=("ddim", "ddpm"), default="ddim")
    p.add_argument("--cfg", type=float, default=1.5, help="classifier-free guidance scale (1 = off)")
    add_cfg_channels(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--classes",
        type=str,
        default=None,
        help="comma-separated class ids, cycled (default: all classes, balanced)",
    )
    p.add_argument(
        "--batch-size", type=int, default=64, help="samples per model call (x2 with guidance; default 64)"
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="fp32, or bf16 autocast of the model (1,000 samples: 277 s vs 200 s on a 2-core CPU with AMX)",
    )
    p.add_argument(
        "--out", required=True, help="output .npz (arr_0 uint8 NHWC, clips NTHWC for a video model; labels int64)"
    )
    p.add_argument(
        "--grid", default=None, help="also write a PNG grid of the first samples (clips: a row of frames each)"
    )
    p.add_argument(
        "--gif", default=None, help="video models: also write an animated GIF of a grid of the first clips (looping)"
    )
    p.add_argument(
        "--grid-num", type=int, default=None, help="samples in the grid and the GIF (default: 100 images, 20 clips)"
    )
    p.add_argument("--json", default=None, help="write a JSON summary here")
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="load a quantized folder without checking its sha256 digests (faster for large models)",
    )
    return p


def parse_classes(text: str | None, num: int, num_classes: int) -> np.ndarray | None:
    from qdit.errors import QditError

    if text is None:
        return None
    try:
        ids = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise QditError(f"--classes must be comma-separated integers, got {text!r}") from None
    if not ids or min(ids) < 0 or max(ids) >= num_classes:
        raise QditError(f"--classes must be ids in [0, {num_classes - 1}], got {text!r}")
    return np.array([ids[i % len(ids)] for i in range(num)], dtype=np.int64)


def run(args: argparse.Namespace) -> int:
    from qdit.api import load_model, sample
    from qdit.diffusion.distributed import finalize, init_distributed
    from qdit.diffusion.sampler import SamplerConfig, check_cfg_scale, is_clip_shape
    from qdit.errors import QditError
    from qdit.eval.npz import save_samples
    from qdit.io.atomic import atomic_path, check_outputs, write_json
    from qdit.models.registry import model_input_path
    from qdit.models.vae import attach_vae, check_vae_dir
    from qdit.viz import clip_frame_grid, clip_grid_frames, image_grid, save_gif

    if args.num < 1:
        raise QditError(f"--num must be >= 1, got {args.num}")
    if args.batch_size < 1:
        raise QditError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.grid_num is not None and args.grid_num < 1:
        raise QditError(f"--grid-num must be >= 1, got {args.grid_num}")
    if not str(args.out).endswith(".npz"):
        raise QditError(f"--out must end with .npz, got {args.out}")
    check_cfg_scale(args.cfg, "--cfg")
    sampler = SamplerConfig(
        steps=args.steps, method=args.method, cfg_scale=args.cfg, clip_denoised=True, cfg_channels=args.cfg_channels,
    )  # fmt: skip
    check_outputs(
        {"--out": args.out, "--grid": args.grid, "--gif": args.gif, "--json": args.json},
        {"--model": model_input_path(args.model)},
    )
    vae = check_vae_dir(args.vae) if args.vae else None
    ctx = init_distributed()
    try:
        model = load_model(args.model, args.arch, device=ctx.device, kernel=args.kernel, verify=not args.no_verify)
        from qdit.nn import kernel_paths, kernel_summary

        kernels = kernel_paths(model)
        if kernels and ctx.is_main:
            print(kernel_summary(model))
        from qdit.models.adapter import get_adapter

        if vae:
            attach_vae(model, vae)
        adapter = get_adapter(model)
        shape, num_classes = adapter.sampling_geometry(model)
        channels, video = shape[0], is_clip_shape(shape)
        if args.gif and not video:
            raise QditError(f"--gif needs a video model; {args.model} makes images (use --grid for a PNG grid)")
        decode = adapter.decoder(model)
        if decode is not None and video:
            raise QditError(f"{args.model} is a video model: qdit does not decode clips with a VAE")
        if decode is None and channels not in (1, 3):
            raise QditError(
                f"{args.model} denoises {channels}-channel latents; decoding them to images needs a VAE: "
                "pass --vae FOLDER (a diffusers AutoencoderKL folder)"
            )
        if decode is not None:  # latents are not clipped to [-1, 1] (as in DiT's own sampling)
            sampler = dataclasses.replace(sampler, clip_denoised=False)
        adapter.check_cfg_scale(model, args.cfg)
        check_cfg_channels(args.cfg_channels, channels)
        labels = parse_classes(args.classes, args.num, num_classes)
        t0 = time.time()
        result = sample(
            model, args.num, args.seed, sampler, labels=labels, batch_size=args.batch_size, progress=True,
            precision=args.precision, dist=ctx,
        )  # fmt: skip
        seconds = time.time() - t0
        if result is None:  # not the main rank
            return 0
        samples, labels_out = result
        save_samples(args.out, samples, labels_out)
        kind = "clips" if video else "images"
        shown = samples[: args.grid_num or (20 if video else 100)]
        if args.grid:
            grid = clip_frame_grid(shown, scale=2) if video else image_grid(shown, nrow=10, scale=2)
            with atomic_path(args.grid, ".png") as tmp:
                grid.save(tmp, format="PNG")
        if args.gif:
            with atomic_path(args.gif, ".gif") as tmp:
                save_gif(clip_grid_frames(shown, nrow=10, scale=2), tmp)
        summary = {
            "model": args.model, "kind": kind, "num": args.num, "steps": args.steps, "method": args.method,
            "cfg": args.cfg, "cfg_channels": args.cfg_channels, "seed": args.seed, "precision": args.precision, "seconds": round(seconds, 2), "ranks": ctx.world_size,
            "out": str(args.out), "kernels": kernels, "vae": getattr(model, "qdit_vae", None),
        }  # fmt: skip
        print(
            f"sampled {args.num} {kind}{f' of {shape[1]} frames' if video else ''} ({args.steps} {args.method} steps, cfg {args.cfg}, seed {args.seed}, "
            f"{args.precision}) "
            f"in {seconds:.1f} s on {ctx.world_size} rank(s) -> {args.out}"
        )
        if args.json:
            write_json(args.json, summary)
        return 0
    finally:
        finalize(ctx)
