"""The video table: FVD and temporal consistency of the embedded video model at W8A8, W6A8 and W4A8.

Rows per bit-width: full precision; per-channel RTN with static activations (the paper's RTN row);
group 128 with static activations; group 128 with dynamic per-token activations (Q-DiT without search);
group 128 with dynamic per-frame activations (one range per clip, frame and group). With
``--recipe R.json`` a searched W4A8 recipe is a row too. Each row is sampled with every seed in
``--seeds`` (the same noise and labels across rows) and scored against the Fashion-MNIST test-set clips
with ``qdit eval`` (ClipNet FVD, frame accuracy, subject consistency, motion); mean and std over seeds.

    python benchmarks/video_results.py [--quick] [--num 100] [--steps 20] [--seeds 0,1] [--bits 8,6,4]
        [--rows fp,rtn,group,token,frame] [--recipe searched.json] [--threads 2]
        [--json benchmarks/results/video.json] [--grid benchmarks/results/video_rows.png]

Every step is a ``qdit`` command (printed), so each can be rerun alone. Quantized models, samples and
per-seed scores stay in ``--work`` (default ``benchmarks/results/work/video``) with the settings they
were made with: rerunning the same command resumes, redoing only what is missing or made differently.
The folder records the model's weights (``weights.json``) and refuses other weights of the same model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from bench_common import check_weights, run_meta, sample_once

from qdit.io.atomic import write_json

ROWS = {  # name -> (label, qdit quantize flags after --w-bits/--a-bits)
    "rtn": ("RTN (per-channel, static)", ["--baseline", "rtn"]),
    "group": ("group 128, static", ["--group-size", "128", "--act-granularity", "static"]),
    "token": ("group 128 + dynamic per token (Q-DiT)", ["--group-size", "128", "--act-granularity", "token"]),
    "frame": ("group 128 + dynamic per frame", ["--group-size", "128", "--act-granularity", "frame"]),
}
METRICS = ("fvd", "frame_acc", "consistency", "motion")


def qdit(*args: str) -> None:
    print("$ qdit", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "qdit", *args], check=True)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def cached_scores(out: Path, config: dict) -> dict[str, float] | None:
    """``out``'s cached scores if they were made with ``config`` (and its clips are there), else None."""
    cached = read_json(out.with_suffix(".metrics.json"))
    values = cached.get("values", {})
    ok = cached.get("config") == config and out.with_suffix(".npz").is_file()
    return values if ok and all(k in values for k in METRICS) else None


def sample_and_score(
    model: str, out: Path, seed: int, a: argparse.Namespace, config: dict
) -> dict[str, float]:
    """Sample ``a.num`` clips with ``seed`` and score them; reuses ``out``'s cached scores when they were
    made with the same ``config``."""
    clips = out.with_suffix(".npz")
    cache = out.with_suffix(".metrics.json")
    values = cached_scores(out, config)
    if values is not None:
        return values
    seconds = sample_once(clips, config, lambda: qdit(
        "sample", "--model", model, "-n", str(a.num), "--steps", str(a.steps), "--seed", str(seed),
        "--batch-size", str(a.batch_size), "--out", str(clips)))  # fmt: skip
    metrics = out.with_suffix(".eval.json")
    qdit("eval", str(clips), "--ref", "fashion-mnist-clips-test", "--metrics", ",".join(METRICS),
         "--no-progress", "--json", str(metrics))  # fmt: skip
    data = json.loads(metrics.read_text())
    values = data.get("metrics", data)
    result = {**{k: float(values[k]) for k in METRICS}, "sample_seconds": seconds}
    write_json(cache, {"config": config, "values": result})
    return result


def quantized(
    name: str, w_bits: int, flags: list[str], work: Path, a: argparse.Namespace, config: dict
) -> str:
    """The quantized model folder for one row, made once per ``config``."""
    folder = work / name
    stamp = work / f"{name}.quantize.json"
    if not (folder / "qdit.json").is_file() or read_json(stamp).get("config") != config:
        qdit("quantize", "--model", a.model, "--w-bits", str(w_bits), "--a-bits", "8", *flags,
             "--out", str(folder))  # fmt: skip
        write_json(stamp, {"config": config})
    return str(folder)


def frame_strip(npz: Path, count: int) -> np.ndarray:
    """The first ``count`` clips of a samples file side by side, each with its frames across and a gap
    between clips: uint8 ``[H, count * (T * W + 4)]``."""
    with np.load(npz) as f:
        clips = f["arr_0"][:count, ..., 0]  # [n, T, H, W]
    n, t, h, w = clips.shape
    across = clips.transpose(0, 2, 1, 3).reshape(n, h, t * w)
    gap = np.full((n, h, 4), 128, np.uint8)
    return np.concatenate([across, gap], axis=2).transpose(1, 0, 2).reshape(h, -1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="20 clips, 10 steps, one seed, W4A8 only")
    p.add_argument("--num", type=int, default=100)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--bits", default="8,6,4", help="weight bit-widths (activations 8 bits)")
    p.add_argument("--rows", default="fp," + ",".join(ROWS))
    p.add_argument("--recipe", default=None, help="a searched W4A8 recipe JSON: adds a 'searched' row")
    p.add_argument("--model", default="embedded-video")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("--cached-only", action="store_true",
                   help="only the rows whose every seed is cached (a table of a run still under way); "
                        "runs no qdit command")  # fmt: skip
    p.add_argument("--work", default=None,
                   help="quantized models, clips and per-seed scores, reused by a rerun (default "
                        "benchmarks/results/work/video, --quick: .../video_quick); files made with other "
                        "settings are redone there, so give other --model/--num/--steps their own")  # fmt: skip
    p.add_argument(
        "--grid", default=None, help="PNG: the first 4 clips of seed 0 for every row, frames across"
    )
    a = p.parse_args(argv)
    if a.quick:
        a.num, a.steps, a.seeds, a.bits = 20, 10, "0", "4"
    seeds = [int(s) for s in a.seeds.split(",")]
    bits = [int(b) for b in a.bits.split(",")]
    rows_wanted = [r for r in a.rows.split(",") if r]
    unknown = set(rows_wanted) - {"fp", *ROWS}
    if unknown:
        p.error(f"unknown rows: {', '.join(sorted(unknown))}")
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    results: list[dict] = []
    strips: list[tuple[str, np.ndarray]] = []
    work = Path(a.work or ("benchmarks/results/work/video" + ("_quick" if a.quick else "")))
    work.mkdir(parents=True, exist_ok=True)
    error = check_weights(work, a.model, record=not a.cached_only)
    if error:
        print(f"video_results.py: error: {error}", file=sys.stderr)
        return 2
    plan: list[tuple[str, str, int | None, list[str] | None]] = []
    if "fp" in rows_wanted:
        plan.append(("fp", "full precision", None, None))
    for b in bits:
        for key in rows_wanted:
            if key in ROWS:
                plan.append((key, ROWS[key][0], b, ROWS[key][1]))
    if a.recipe:
        plan.append(("searched", f"searched recipe {Path(a.recipe).name}", 4, ["--recipe", a.recipe]))
    for key, label, w_bits, flags in plan:
        model = a.model
        name = "fp" if w_bits is None else f"w{w_bits}a8_{key}"
        # what a cached model or score must have been made with to be reused
        config: dict = {"model": a.model, "flags": flags, "num": a.num, "steps": a.steps}
        if key == "searched":  # the recipe by its contents, however its path is spelled
            config["flags"] = ["--recipe"]
            config["recipe_sha256"] = hashlib.sha256(Path(a.recipe).read_bytes()).hexdigest()
        if a.cached_only and any(cached_scores(work / f"{name}_s{seed}", config) is None for seed in seeds):
            print(f"not finished: {label} (W{w_bits}A8)" if w_bits else f"not finished: {label}", flush=True)
            continue
        if w_bits is not None and not a.cached_only:
            made_with = {k: v for k, v in config.items() if k not in ("num", "steps")}
            model = quantized(name, w_bits, flags or [], work, a, made_with)
        per_seed = [sample_and_score(model, work / f"{name}_s{seed}", seed, a, config) for seed in seeds]
        if a.grid:
            strips.append((f"{'FP' if w_bits is None else f'W{w_bits}A8'} {label}",
                           frame_strip(work / f"{name}_s{seeds[0]}.npz", 4)))  # fmt: skip
        row = {"row": key, "label": label, "w_bits": w_bits, "a_bits": None if w_bits is None else 8,
               "seeds": seeds, "per_seed": per_seed}  # fmt: skip
        for m in (*METRICS, "sample_seconds"):
            vals = [r[m] for r in per_seed]
            row[m] = float(np.mean(vals))
            row[f"{m}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        if results and results[0]["row"] == "fp" and key != "fp":
            # FVD minus full precision's on the same seed (same noise and labels): the seeds' spread
            # of FVD itself (tens of points at 100 clips) is mostly shared by every row
            diffs = [r["fvd"] - f["fvd"] for r, f in zip(per_seed, results[0]["per_seed"], strict=True)]
            row["fvd_vs_fp"] = float(np.mean(diffs))
            row["fvd_vs_fp_std"] = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else None
        results.append(row)
        print(json.dumps({k: row[k] for k in ("label", "w_bits", *METRICS)}), flush=True)
        if a.json:  # after every row, so that a long run's finished rows can be read before its end
            meta = run_meta(a, complete=len(results) == len(plan))
            write_json(Path(a.json), {"rows": results, "meta": meta})
    print(
        f"\n{a.model}: {a.num} clips x {len(seeds)} seeds, {a.steps} DDIM steps, cfg 1.5, {a.threads} threads"
    )
    print("| setting | method | FVD (ClipNet) | FVD - FP's, same seeds | frame acc | consistency | motion |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        setting = "FP" if r["w_bits"] is None else f"W{r['w_bits']}A8"

        def fmt(m: str, digits: int, r: dict = r) -> str:
            if m not in r:
                return "-"
            std = r[f"{m}_std"]
            sign = "+" if m == "fvd_vs_fp" else ""
            return f"{r[m]:{sign}.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")

        print(f"| {setting} | {r['label']} | {fmt('fvd', 2)} | {fmt('fvd_vs_fp', 2)} | {fmt('frame_acc', 3)} | "
              f"{fmt('consistency', 4)} | {fmt('motion', 4)} |")  # fmt: skip
    if a.grid and strips:
        from PIL import Image, ImageDraw

        pad = 14
        h, w = strips[0][1].shape
        canvas = Image.new("L", (w, len(strips) * (h + pad)), 0)
        draw = ImageDraw.Draw(canvas)
        for i, (label, strip) in enumerate(strips):
            draw.text((2, i * (h + pad)), label, fill=255)
            canvas.paste(Image.fromarray(strip), (0, i * (h + pad) + pad))
        Path(a.grid).parent.mkdir(parents=True, exist_ok=True)
        canvas.save(a.grid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
